// GetDiagnosticData: what the kubelet's termination message needs from a container (upstream's
// one log_type, "termination_log"): the file behind the mount at the path the container's
// io.kubernetes.container.terminationMessagePath annotation names, read from the guest side of
// that mount. The container writes it: at most 4 KiB are read (Kubernetes' own cap), invalid
// UTF-8 is replaced, and a missing file is an empty message.
import fs from 'node:fs';
import path from 'node:path';
import type { grpc } from '../proto/gen/types.js';
import type { Init } from '../proto/registry.js';
import type { Container } from './container.js';
import { invalid, notFound } from './errors.js';

export const TERMINATION_MESSAGE_ANNOTATION = 'io.kubernetes.container.terminationMessagePath';
export const MAX_TERMINATION_MESSAGE = 4096;

interface BundleSpec {
  annotations?: Record<string, string>;
  mounts?: Array<{ destination?: string; source?: string }>;
}

export function diagnosticData(c: Container, logType: string): Init<grpc.GetDiagnosticDataResponse> {
  if (logType !== 'termination_log') throw invalid(`unsupported diagnostic log_type: ${JSON.stringify(logType)} (termination_log)`);
  const spec = JSON.parse(fs.readFileSync(path.join(c.bundle, 'config.json'), 'utf8')) as BundleSpec;
  const dest = spec.annotations?.[TERMINATION_MESSAGE_ANNOTATION];
  if (!dest) throw notFound(`container ${c.id}: no ${TERMINATION_MESSAGE_ANNOTATION} annotation`);
  const source = spec.mounts?.find((m) => m.destination === dest)?.source;
  if (!source) throw notFound(`container ${c.id}: no mount at the termination message path ${dest}`);
  let fd: number;
  try {
    // The container can write that file, never the path to it; O_NOFOLLOW all the same.
    fd = fs.openSync(source, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { data: '' };
    throw e;
  }
  try {
    if (!fs.fstatSync(fd).isFile()) throw invalid(`container ${c.id}: the termination message ${source} is not a regular file`);
    const buf = Buffer.alloc(MAX_TERMINATION_MESSAGE);
    let n = 0;
    while (n < buf.length) {
      const r = fs.readSync(fd, buf, n, buf.length - n, n);
      if (r === 0) break;
      n += r;
    }
    return { data: buf.subarray(0, n).toString('utf8') };
  } finally {
    fs.closeSync(fd);
  }
}
