import { describe, expect, it } from 'vitest';
import { decodeRequest, decodeResponse, encodeRequest, encodeResponse } from '../../proto/ttrpc/envelope.js';
import { decode, encode } from '../../proto/registry.js';

// The envelope codec is hand-driven for speed; the schema in proto/schema/ttrpc is the reference.
describe('ttrpc envelope', () => {
  it('encodes a Request exactly as the reflected ttrpc.Request schema does', () => {
    const fast = encodeRequest({
      service: 'containerd.task.v2.Task',
      method: 'Create',
      payload: Buffer.from([1, 2, 3]),
      timeoutNano: 5_000_000_000,
      metadata: new Map([['containerd-namespace', ['k8s.io']], ['x', ['a', 'b']]]),
    });
    const ref = encode('ttrpc.Request', {
      service: 'containerd.task.v2.Task',
      method: 'Create',
      payload: Buffer.from([1, 2, 3]),
      timeout_nano: 5_000_000_000,
      metadata: [
        { key: 'containerd-namespace', value: 'k8s.io' },
        { key: 'x', value: 'a' },
        { key: 'x', value: 'b' },
      ],
    });
    expect(Buffer.from(fast).toString('hex')).toBe(Buffer.from(ref).toString('hex'));
    const back = decodeRequest(ref);
    expect(back.timeoutNano).toBe(5_000_000_000);
    expect([...back.metadata]).toEqual([['containerd-namespace', ['k8s.io']], ['x', ['a', 'b']]]);
  });

  it('encodes a Response with status and details as the schema does', () => {
    const status = { code: 5, message: 'container c1 not found', details: [{ type_url: 't', value: Buffer.from('v') }] };
    const fast = encodeResponse({ status, payload: new Uint8Array(0) });
    const ref = encode('ttrpc.Response', { status });
    expect(Buffer.from(fast).equals(Buffer.from(ref))).toBe(true);
    const back = decodeResponse(fast);
    expect(back.status?.code).toBe(5);
    expect(back.status?.message).toBe('container c1 not found');
    expect(Buffer.from(back.status!.details[0]!.value).toString()).toBe('v');
    const viaSchema = decode('ttrpc.Response', fast);
    expect(viaSchema.status?.message).toBe('container c1 not found');
  });

  it('skips unknown fields (a newer peer) and rejects field number 0', () => {
    const withExtra = Buffer.concat([Buffer.from(encodeRequest({ service: 's', method: 'm', payload: new Uint8Array(0), timeoutNano: 0, metadata: new Map() })), Buffer.from([0x98, 0x06, 0x01])]);
    expect(decodeRequest(withExtra).method).toBe('m');
    expect(() => decodeRequest(Buffer.from([0x00, 0x01]))).toThrow(/field number 0/);
  });

  it('throws on truncated input instead of reading past the end', () => {
    const full = Buffer.from(encodeRequest({ service: 'svc', method: 'method', payload: Buffer.alloc(10), timeoutNano: 0, metadata: new Map() }));
    for (let n = 1; n < full.length; n++) {
      try {
        decodeRequest(full.subarray(0, n));
      } catch (e) {
        expect(e).toBeInstanceOf(Error);
      }
    }
    expect(() => decodeRequest(full.subarray(0, full.length - 1))).toThrow();
  });
});
