// Sealed secrets (attestation/sealed-secret.ts) in a container's spec, unsealed by the agent at
// CreateContainer before the container is made (and in an ExecProcess's env, which the host builds
// from the container's spec): each env value `sealed.…` is replaced by the KBS
// resource it names, and each file `sealed.…` in a bind-mounted volume (a Kubernetes secret or config
// map the host shares or copies into the guest) is replaced in a guest-private copy of that volume,
// which the container binds instead; the host's copy keeps the sealed text, the plaintext never
// leaves the guest. The resources come through the pod's attestation client (the CDH endpoint's KBS
// client), so the KBS decides on this VM's evidence.
//
// Order: the policy gate decides the request first (the interceptor runs before the handler), so the
// policy sees the sealed value, never the plaintext; a policy pins a sealed env value like any other.
// A refusal fails the CreateContainer with the env var (or file) and the KBS's answer named, and
// nothing of the container is made.
import fs from 'node:fs';
import path from 'node:path';
import { isSealed, parseSealedSecret, SealedSecretError, MAX_SEALED_BYTES } from '../attestation/sealed-secret.js';
import { resourceUri, type ResourcePath } from '../attestation/resource-uri.js';
import { KbsClientError } from '../attestation/client.js';
import { Code, TtrpcError } from './errors.js';
import { type Dir, namesBelow, openChildDir, openDirBeneath, openLeaf } from './beneath.js';
import type { Logger } from './log.js';

/** What a volume may bring into the scan and the guest-private copy. */
const VOLUME_LIMITS = { entries: 256, bytes: 8 << 20 };
/** An unsealed env value goes into the process's environment: text, bounded. */
const MAX_ENV_VALUE = 1 << 20;

export interface ResourceSource {
  /** The resource's bytes from the pod's KBS; throws KbsClientError for the KBS's answers. */
  fetchResource(r: ResourcePath): Promise<Buffer>;
}

function refusal(what: string, uri: string, e: unknown): TtrpcError {
  if (e instanceof KbsClientError) {
    const info = e.info ? ` ${e.info.type.replace(/^.*\//, '')}: ${e.info.detail}` : ` ${e.message}`;
    const code = e.status === 401 || e.status === 403 ? Code.PermissionDenied : e.status === 404 ? Code.NotFound : Code.Unavailable;
    return new TtrpcError(code, `${what}: sealed secret ${uri}: the KBS answered ${e.status}:${info}`);
  }
  return new TtrpcError(Code.Unavailable, `${what}: sealed secret ${uri}: ${(e as Error).message}`);
}

async function unsealOne(what: string, value: string, kbs: ResourceSource | undefined): Promise<Buffer> {
  let sealed;
  try {
    sealed = parseSealedSecret(value);
  } catch (e) {
    throw new TtrpcError(Code.InvalidArgument, `${what}: ${e instanceof SealedSecretError ? 'not a sealed secret this guest unseals' : 'bad sealed secret'}: ${(e as Error).message}`);
  }
  if (!kbs) throw new TtrpcError(Code.FailedPrecondition, `${what}: sealed secret ${sealed.uri}: this VM has no attestation (no SNP report port, or no KBS named by initdata or the pod's annotation)`);
  try {
    return await kbs.fetchResource(sealed.resource);
  } catch (e) {
    throw refusal(what, resourceUri(sealed.resource), e);
  }
}

/** The env with each sealed value unsealed; the names of the variables unsealed. `context` starts each error ("CreateContainer <id>"). */
export async function unsealEnv(env: string[], kbs: ResourceSource | undefined, context: string): Promise<{ env: string[]; unsealed: string[] }> {
  const unsealed: string[] = [];
  const out: string[] = [];
  for (const kv of env) {
    const eq = kv.indexOf('=');
    const name = eq < 0 ? kv : kv.slice(0, eq);
    const value = eq < 0 ? '' : kv.slice(eq + 1);
    if (!isSealed(value)) {
      out.push(kv);
      continue;
    }
    const what = `${context}: env ${name}`;
    const bytes = await unsealOne(what, value, kbs);
    if (bytes.length > MAX_ENV_VALUE || bytes.includes(0)) throw new TtrpcError(Code.InvalidArgument, `${what}: the unsealed secret (${bytes.length} bytes) is not an environment value (NUL bytes, or larger than ${MAX_ENV_VALUE})`);
    out.push(`${name}=${bytes.toString('utf8')}`);
    unsealed.push(name);
  }
  return { env: out, unsealed };
}

/** A mount as config.json has it (agent/spec.ts). */
interface OciMount {
  destination: string;
  source?: string;
  type?: string;
  options?: string[];
}

interface Entry {
  rel: string;
  kind: 'dir' | 'file' | 'link';
  mode: number;
  link?: string;
  data?: Buffer;
}

class TooLarge extends Error {}

/**
 * The volume at `src` (a file or a directory tree below `root`), bounded; undefined when it holds no
 * sealed file. The share is the host's to change at any moment: every step goes through a verified
 * directory descriptor and never follows a symlink (agent/beneath.ts), so a component swapped for a
 * symlink fails the scan instead of copying the guest's own files (another container's unsealed
 * copies, say) into this container's volume.
 */
function scanVolume(root: string, src: string, what: string): Entry[] | undefined {
  const names = namesBelow(root, src, what);
  if (!names.length) return undefined;
  const entries: Entry[] = [];
  let bytes = 0;
  let sealed = false;
  const visit = (dir: Dir, name: string, rel: string): void => {
    if (entries.length >= VOLUME_LIMITS.entries) throw new TooLarge(`more than ${VOLUME_LIMITS.entries} entries`);
    const leaf = openLeaf(dir, name);
    fs.closeSync(leaf.fd);
    const st = leaf.stat;
    if (st.isSymbolicLink()) {
      entries.push({ rel, kind: 'link', mode: 0o777, link: fs.readlinkSync(dir.at(name)) });
    } else if (st.isDirectory()) {
      entries.push({ rel, kind: 'dir', mode: st.mode & 0o7777 });
      const sub = openChildDir(dir, name, what).dir;
      try {
        for (const n of fs.readdirSync(sub.ref).sort()) visit(sub, n, rel ? path.join(rel, n) : n);
      } finally {
        sub.close();
      }
    } else if (st.isFile()) {
      bytes += st.size;
      if (bytes > VOLUME_LIMITS.bytes) throw new TooLarge(`more than ${VOLUME_LIMITS.bytes} bytes`);
      const fd = fs.openSync(dir.at(name), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
      let data: Buffer;
      try {
        if (!fs.fstatSync(fd).isFile()) throw new TtrpcError(Code.PermissionDenied, `${what}: ${dir.child(name)} changed while it was read`);
        data = fs.readFileSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      if (data.length > st.size) throw new TooLarge(`${dir.child(name)} grew while it was read`);
      if (data.length <= MAX_SEALED_BYTES && isSealed(data.subarray(0, 7).toString('latin1'))) sealed = true;
      entries.push({ rel, kind: 'file', mode: st.mode & 0o7777, data });
    }
    // Devices, sockets, FIFOs: not part of a secret volume, and not copied.
  };
  const parent = openDirBeneath(root, path.dirname(src), what).dir;
  try {
    visit(parent, names[names.length - 1]!, '');
  } finally {
    parent.close();
  }
  return sealed ? entries : undefined;
}

/**
 * Read-only bind mounts whose source (below `sharedRoot`, what the host shares or copied in) holds
 * sealed files get a guest-private copy under `copyDir` with those files unsealed, and their source
 * is pointed at it. Read-only ones only: Kubernetes mounts secrets and config maps so, and a copy of
 * a writable volume would stop sharing it. A volume larger than VOLUME_LIMITS is not a secret
 * volume: left as it is, with a warning. Returns the destinations whose volume was unsealed.
 */
export async function unsealMounts(
  mounts: OciMount[],
  sharedRoot: string,
  copyDir: string,
  kbs: ResourceSource | undefined,
  cid: string,
  log: Logger,
): Promise<string[]> {
  const done: string[] = [];
  const root = path.resolve(sharedRoot);
  for (const [i, m] of mounts.entries()) {
    const bind = m.type === 'bind' || m.options?.includes('bind') || m.options?.includes('rbind');
    if (!bind || !m.source || !m.options?.includes('ro')) continue;
    const src = path.resolve(m.source);
    if (!src.startsWith(`${root}/`) || !fs.existsSync(src)) continue;
    const what = `CreateContainer ${cid}: volume ${m.destination}`;
    let entries: Entry[] | undefined;
    try {
      entries = scanVolume(root, src, what);
    } catch (e) {
      if (!(e instanceof TooLarge)) throw e;
      log.warn({ container: cid, volume: m.destination, why: e.message }, 'volume too large to be a secret volume: not scanned for sealed secrets');
      continue;
    }
    if (!entries) continue;
    const dest = path.join(copyDir, String(i));
    fs.mkdirSync(copyDir, { recursive: true, mode: 0o700 });
    for (const e of entries) {
      const to = e.rel ? path.join(dest, e.rel) : dest;
      if (e.kind === 'dir') fs.mkdirSync(to, { mode: e.mode });
      else if (e.kind === 'link') fs.symlinkSync(e.link!, to);
      else {
        const text = e.data!.length <= MAX_SEALED_BYTES ? e.data!.toString('utf8') : '';
        const data = isSealed(text) ? await unsealOne(`${what}: file ${e.rel || path.basename(src)}`, text.trim(), kbs) : e.data!;
        fs.writeFileSync(to, data, { mode: e.mode });
      }
    }
    m.source = dest;
    done.push(m.destination);
  }
  return done;
}

/** Unseals config.json's env and volumes in place; a refusal throws (the caller removes the bundle). */
export async function unsealSpec(
  spec: { process?: { env?: string[] }; mounts?: OciMount[] },
  o: { sharedRoot: string; copyDir: string; kbs: ResourceSource | undefined; cid: string; log: Logger },
): Promise<void> {
  try {
    if (spec.process?.env?.length) {
      const { env, unsealed } = await unsealEnv(spec.process.env, o.kbs, `CreateContainer ${o.cid}`);
      if (unsealed.length) {
        spec.process.env = env;
        o.log.info({ container: o.cid, env: unsealed }, 'sealed env values unsealed');
      }
    }
    const volumes = await unsealMounts(spec.mounts ?? [], o.sharedRoot, o.copyDir, o.kbs, o.cid, o.log);
    if (volumes.length) o.log.info({ container: o.cid, volumes }, 'sealed files unsealed into guest-private copies');
  } catch (e) {
    fs.rmSync(o.copyDir, { recursive: true, force: true });
    o.log.warn({ container: o.cid, err: (e as Error).message }, 'unsealing refused: the container is not created');
    throw e;
  }
}
