// Where a pod's KBS is, when its pod annotation names it (initdata's cdh.toml/aa.toml otherwise):
// shared by the agent (which takes it), the CDH endpoint and `katats policy gen` (which pins it).

/** The pod annotation naming the KBS (http(s)://host:port). */
export const KBS_URL_ANNOTATION = 'io.katats.attestation.kbs_url';

/** A KBS URL as a pod may name one: http or https, a host, nothing else odd. Returns its origin. */
export function checkKbsUrl(u: string): string {
  let url: URL;
  try {
    url = new URL(u);
  } catch {
    throw new Error(`KBS URL ${JSON.stringify(u)} is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`KBS URL ${JSON.stringify(u)} is not http(s)`);
  if (url.username || url.password || url.search || url.hash) throw new Error(`KBS URL ${JSON.stringify(u)} carries credentials, a query or a fragment`);
  return url.origin;
}
