// CoCo's resource URIs: `kbs://<kbs host>/<repository>/<type>/<tag>`. An empty host means "the
// pod's KBS" (the one its initdata or annotation names), which is the only form taken here: a
// sealed value must not steer the guest to a KBS of the host's choosing.

const COMPONENT = /^[A-Za-z0-9._-]{1,128}$/;

export interface ResourcePath {
  repository: string;
  type: string;
  tag: string;
}

/** A path component as the KBS takes one. */
export const isResourceComponent = (p: string): boolean => COMPONENT.test(p) && p !== '.' && p !== '..';

export function parseResourceUri(uri: string): ResourcePath {
  const m = /^kbs:\/\/([^/]*)\/([^/]+)\/([^/]+)\/([^/]+)$/.exec(uri);
  if (!m) throw new Error(`resource URI ${JSON.stringify(uri.slice(0, 200))} is not kbs:///<repository>/<type>/<tag>`);
  if (m[1]) throw new Error(`resource URI ${JSON.stringify(uri)} names a KBS host (${m[1]}); only the pod's own KBS (kbs:///...) is used`);
  const [repository, type, tag] = [m[2]!, m[3]!, m[4]!];
  for (const p of [repository, type, tag]) {
    if (!isResourceComponent(p)) throw new Error(`resource URI ${JSON.stringify(uri)}: a path component is [A-Za-z0-9._-]{1,128}, not . or ..`);
  }
  return { repository, type, tag };
}

export const resourceUri = (r: ResourcePath): string => `kbs:///${r.repository}/${r.type}/${r.tag}`;
