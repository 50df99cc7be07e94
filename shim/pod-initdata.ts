// The pod's initdata, as Kata's shim takes it: the annotation
// io.katacontainers.config.hypervisor.cc_init_data (base64 of the gzip'd TOML document,
// attestation/initdata.ts). Taken out of every spec, as the policy annotation is (CRI passes pod
// annotations to containers too; a policy would otherwise have to pin the document that pins it).
// The sandbox's document becomes the VM's launch data (its digest as HOST_DATA) and is served to the
// guest as fw_cfg opt/katats/initdata, where the agent takes its policy and its KBS.
import type { grpc } from '../proto/gen/types.js';
import { decodeInitdataAnnotation, INITDATA_ANNOTATION, InitdataError, parseInitdata, type Initdata } from '../attestation/initdata.js';
import { invalid } from './errdefs.js';

export function takePodInitdata(spec: grpc.Spec, what: string): Initdata | undefined {
  const ann = spec.Annotations;
  if (!ann || !(INITDATA_ANNOTATION in ann)) return undefined;
  const value = ann[INITDATA_ANNOTATION]!;
  delete ann[INITDATA_ANNOTATION];
  try {
    return parseInitdata(decodeInitdataAnnotation(value));
  } catch (e) {
    if (e instanceof InitdataError) throw invalid(`${what}: annotation ${INITDATA_ANNOTATION}: ${e.message}`);
    throw e;
  }
}
