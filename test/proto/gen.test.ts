import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { generate } from '../../proto/tools/gen.js';
import { decode, encode, packAny, unpackAny, root } from '../../proto/registry.js';

const genDir = path.resolve(import.meta.dirname, '../../proto/gen');

describe('generated protobuf artifacts', () => {
  it('are up to date with proto/schema (run `npm run gen` after editing a .proto)', () => {
    const { descriptor, types } = generate();
    expect(fs.readFileSync(path.join(genDir, 'descriptor.ts'), 'utf8')).toBe(descriptor);
    expect(fs.readFileSync(path.join(genDir, 'types.ts'), 'utf8')).toBe(types);
  });

  it('holds every service the wires need', () => {
    for (const s of [
      'containerd.task.v2.Task',
      'containerd.services.events.ttrpc.v1.Events',
      'containerd.services.snapshots.v1.Snapshots',
      'grpc.AgentService',
      'grpc.Health',
    ]) {
      expect(root.lookupService(s).methodsArray.length).toBeGreaterThan(0);
    }
  });

  it('decodes int64 as plain numbers', () => {
    const bytes = encode('containerd.task.v2.WaitResponse', { exit_status: 137, exited_at: { seconds: 1_800_000_000, nanos: 5 } });
    const back = decode('containerd.task.v2.WaitResponse', bytes);
    expect(back.exited_at?.seconds).toBe(1_800_000_000);
    expect(typeof back.exited_at?.seconds).toBe('number');
  });

  it('packs events into Any under the bare type name containerd uses', () => {
    const any = packAny('containerd.events.TaskExit', { container_id: 'c1', pid: 42, exit_status: 3 });
    expect(any.type_url).toBe('containerd.events.TaskExit');
    const { name, message } = unpackAny(any);
    expect(name).toBe('containerd.events.TaskExit');
    expect(message).toMatchObject({ container_id: 'c1', pid: 42, exit_status: 3 });
  });
});
