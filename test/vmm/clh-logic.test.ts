// The cloud-hypervisor pieces that are pure logic: the HTTP response parser's bounds and framings,
// the event-monitor reader's bound, bdf -> PCI path, katats-chv's option and fds-header parsing.
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { bdfToPciPath } from '../../vmm/clh/client.js';
import { type ClhEvent, EventWriter, MAX_EVENT_BYTES, readEvents } from '../../vmm/clh/events.js';
import { HttpProtocolError, MAX_HEAD_BYTES, parseResponse } from '../../vmm/clh/http.js';
import { parseChvArgs } from '../../vmm/chv/main.js';
import { parseFdsHeader } from '../../vmm/chv/server.js';

const b = (s: string) => Buffer.from(s, 'latin1');

describe('HTTP response parser', () => {
  it('reads Content-Length, chunked and close-delimited bodies, and 204 without one', () => {
    expect(parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}'), false)).toMatchObject({ done: true, response: { status: 200, body: b('{}') } });
    expect(parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}'), false)).toEqual({ done: false });
    expect(parseResponse(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[\"\r\n3\r\nx\"]\r\n0\r\n\r\n'), false)).toMatchObject({ done: true, response: { body: b('["x"]') } });
    expect(parseResponse(b('HTTP/1.1 500 Internal\r\n\r\n["a"]'), false)).toEqual({ done: false });
    expect(parseResponse(b('HTTP/1.1 500 Internal\r\n\r\n["a"]'), true)).toMatchObject({ done: true, response: { status: 500, body: b('["a"]') } });
    expect(parseResponse(b('HTTP/1.1 204 No Content\r\n\r\n'), false)).toMatchObject({ done: true, response: { status: 204 } });
  });

  it('refuses what is not HTTP, a truncated answer, and anything past its bounds', () => {
    expect(() => parseResponse(b('SSH-2.0-x\r\n\r\n'), false)).toThrow(HttpProtocolError);
    expect(() => parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}'), true)).toThrow(/closed inside the response body/);
    expect(() => parseResponse(b(''), true)).toThrow(/without a response/);
    expect(() => parseResponse(Buffer.alloc(MAX_HEAD_BYTES + 1, 0x61), false)).toThrow(/head larger/);
    expect(() => parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n'), false)).toThrow(/larger than/);
    expect(() => parseResponse(b('HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n'), false, 10)).toThrow(/larger than 10/);
    expect(() => parseResponse(b('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n'), false)).toThrow(/bad chunk size/);
  });
});

describe('event monitor', () => {
  it('round-trips the writer through the reader, and drops (and counts) an event past the bound and what is not an event', async () => {
    const pipe = new PassThrough();
    const got: ClhEvent[] = [];
    const bad: string[] = [];
    const dropped = readEvents(pipe, (e) => got.push(e), (why) => bad.push(why));
    const w = new EventWriter(pipe);
    w.emit('vm', 'booting');
    pipe.write(`{"huge": "${'x'.repeat(MAX_EVENT_BYTES)}"}`);
    pipe.write('\n\n');
    w.emit('vm', 'device-removed', { id: 'd0' });
    pipe.write('not json\n\n');
    pipe.end();
    await new Promise((r) => pipe.once('end', r));
    expect(got.map((e) => [e.source, e.event, e.properties])).toEqual([['vm', 'booting', null], ['vm', 'device-removed', { id: 'd0' }]]);
    expect(bad).toEqual([`event larger than ${MAX_EVENT_BYTES} bytes`, 'not JSON']);
    expect(dropped()).toBe(2);
  });
});

describe('PCI paths, katats-chv options and fds header', () => {
  it('turns a root-bus bdf into a PCI path and refuses one it cannot say', () => {
    expect(bdfToPciPath('0000:00:05.0')).toBe('05');
    expect(bdfToPciPath('00:1f.0')).toBe('1f');
    expect(() => bdfToPciPath('0000:01:00.0')).toThrow(/root bus/);
    expect(() => bdfToPciPath('0001:00:05.0')).toThrow(/root bus/);
    expect(() => bdfToPciPath('5')).toThrow(/not a PCI address/);
  });

  it('parses cloud-hypervisor\'s option syntax and refuses unknown or malformed options', () => {
    expect(parseChvArgs(['--api-socket', 'path=/r/api.sock', '--event-monitor', 'fd=3'])).toMatchObject({ apiSocket: '/r/api.sock', eventMonitor: { fd: 3 }, runDir: '/r/chv', accel: 'auto' });
    expect(parseChvArgs(['--api-socket', '/r/a.sock', '--event-monitor', 'path=/r/ev', '--accel', 'tcg', '--run-dir', '/x'])).toMatchObject({ apiSocket: '/r/a.sock', eventMonitor: { path: '/r/ev' }, runDir: '/x', accel: 'tcg' });
    expect(() => parseChvArgs([])).toThrow(/--api-socket is required/);
    expect(() => parseChvArgs(['--api-socket', '/a', '--kernel', '/k'])).toThrow(/unknown option --kernel/);
    expect(() => parseChvArgs(['--api-socket', '/a', '--event-monitor', 'fd=x'])).toThrow(/not a number/);
    expect(() => parseChvArgs(['--api-socket', '/a', '--accel', 'hvf'])).toThrow(/auto\|kvm\|tcg/);
  });

  it('reads the front\'s X-Katats-Fds header and refuses a malformed one', () => {
    expect(parseFdsHeader('123:4,5')).toEqual({ pid: 123, fds: [4, 5] });
    expect(parseFdsHeader(undefined)).toBeUndefined();
    expect(() => parseFdsHeader('123:')).toThrow();
    expect(() => parseFdsHeader('../x:1')).toThrow();
  });
});
