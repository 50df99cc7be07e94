// Ids that become host paths: an id from containerd's command line or from a pod annotation must
// never name a directory outside the one it is joined to. The attack: a grouping annotation of
// `..` made the daemon's exit remove the whole state root (every other pod's state and sockets).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkId, ID_MAX_LENGTH, INVALID_ID, isValidId } from '../../sys/ids.js';
import pino from 'pino';
import { shimHost, until, type ShimHost } from './shim-host.js';
import { TaskService } from '../../shim/task-service.js';
import { EventPublisher } from '../../shim/events.js';
import { DEFAULTS } from '../../shim/config.js';
import { Code } from '../../proto/ttrpc/index.js';

describe('the id rule (containerd identifiers)', () => {
  it('admits what containerd, CRI and ctr produce', () => {
    for (const id of ['a', 'pod1', 'long1', 'after-restart', 'e1', 'x.y_z-0', 'A9', 'f'.repeat(64), 'k'.repeat(ID_MAX_LENGTH)]) expect(isValidId(id), id).toBe(true);
  });

  it('refuses anything that could leave its directory or is not an identifier', () => {
    for (const id of ['', '.', '..', '../x', 'a/b', '/abs', '.hidden', 'a..b', 'a--b', '-a', 'a-', 'a b', 'a\0b', 'é', 'k'.repeat(ID_MAX_LENGTH + 1)]) {
      expect(isValidId(id), JSON.stringify(id)).toBe(false);
      expect(() => checkId(id, 'container id')).toThrow(expect.objectContaining({ code: INVALID_ID, message: expect.stringContaining('container id') }));
    }
  });
});

describe('the shim refuses ids that would become paths outside its state', () => {
  let h: ShimHost;
  beforeAll(async () => {
    h = await shimHost();
  }, 120_000);
  afterAll(() => h?.cleanup());

  it('a grouping annotation of ".." is refused by start: no daemon, the state root and other pods untouched', async () => {
    // Another pod's state, as the daemon of a running pod leaves it.
    const victim = path.join(h.stateDir, 'sandboxes', 'victim');
    fs.mkdirSync(victim, { recursive: true });
    fs.writeFileSync(path.join(victim, 'shim.json'), '{}');
    const bundle = h.bundle('dotdot', { 'io.kubernetes.cri.sandbox-id': '..' });
    const r = await h.run('start', 'ctr1', bundle);
    if (r.code === 0) {
      // The code before the fix: a daemon for pod ".." serves; containerd's last Delete shuts it down.
      await h.shutdown(r.stdout.trim());
      await until(() => h.daemons(), (d) => d.length === 0);
    }
    expect(fs.existsSync(path.join(victim, 'shim.json')), 'the other pod\'s state survives').toBe(true);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/io\.kubernetes\.cri\.sandbox-id.*"\.\."|"\.\.".*io\.kubernetes\.cri\.sandbox-id/);
    expect(h.daemons()).toEqual([]);
  }, 120_000);

  it('the other grouping annotation and the command line ids are checked too', async () => {
    const grp = await h.run('start', 'ctr2', h.bundle('grp', { 'io.containerd.runc.v2.group': '../../etc' }));
    expect(grp.code).not.toBe(0);
    expect(grp.stderr).toContain('"../../etc"');
    const badId = await h.run('start', '../x', h.bundle('plain'));
    expect(badId.code).not.toBe(0);
    expect(badId.stderr).toContain('"../x"');
    const badNs = await h.run('start', 'ok1', h.bundle('plain'), { namespace: 'a/b' });
    expect(badNs.code).not.toBe(0);
    expect(badNs.stderr).toContain('"a/b"');
    // delete (containerd runs it after a shim died) must not touch paths either.
    const del = await h.run('delete', 'ctr3', h.bundle('deldotdot', { 'io.kubernetes.cri.sandbox-id': '..' }));
    expect(del.code).not.toBe(0);
    expect(del.stderr).toContain('".."');
    expect(fs.existsSync(path.join(h.stateDir, 'sandboxes', 'victim', 'shim.json'))).toBe(true);
    expect(h.daemons()).toEqual([]);
  }, 120_000);
});

describe('the Task service refuses container and exec ids that are not identifiers', () => {
  it('Create and Exec answer InvalidArgument naming the id, before any file or VM is made', async () => {
    const log = pino({ level: 'silent' });
    let launched = 0;
    const svc = new TaskService({
      sandboxId: 'pod1',
      namespace: 'sec',
      config: { ...structuredClone(DEFAULTS), source: '<test>' },
      // Never reached: the ids are refused first.
      launcher: () => {
        launched++;
        return Promise.reject(new Error('no VM for this test'));
      },
      events: new EventPublisher({ address: '/nonexistent/containerd.sock.ttrpc', namespace: 'sec', logger: log }),
      stateDir: '/nonexistent',
      log,
      onShutdown: () => {},
    });
    for (const id of ['..', '../../x', 'a/b']) {
      const e = (await Promise.resolve(svc.impl.Create!({ id, bundle: '/nonexistent', rootfs: [], terminal: false, stdin: '', stdout: '', stderr: '', checkpoint: '', parent_checkpoint: '', options: null }, undefined as never)).catch((x: unknown) => x)) as { code: number; message: string };
      expect(e.code).toBe(Code.InvalidArgument);
      expect(e.message).toContain(`container id ${JSON.stringify(id)}`);
      const x = (await Promise.resolve(svc.impl.Exec!({ id: 'pod1', exec_id: id, terminal: false, stdin: '', stdout: '', stderr: '', spec: null }, undefined as never)).catch((err: unknown) => err)) as { code: number; message: string };
      expect(x.code).toBe(Code.InvalidArgument);
      expect(x.message).toContain(`exec id ${JSON.stringify(id)}`);
    }
    expect(launched).toBe(0);
  });
});
