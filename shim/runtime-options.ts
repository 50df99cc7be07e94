// CRI's runtime options for the handler (runtimeoptions.v1.Options) off the wire, for sandboxConfig
// (config.ts), which stays free of the codecs: `start` reads the config on every pod's start path.
import { decode } from '../proto/registry.js';
import type { RuntimeOptions } from './config.js';

/** The options when they are runtimeoptions.v1.Options; null for none or another type. */
export function decodeRuntimeOptions(options: { type_url: string; value: Uint8Array } | null | undefined): RuntimeOptions | null {
  return options?.type_url.endsWith('runtimeoptions.v1.Options') ? decode('runtimeoptions.v1.Options', options.value) : null;
}
