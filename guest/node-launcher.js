'use strict';
// Entry of the guest's node startup snapshot (node --build-snapshot). Node 18 from Debian is built
// without node's own startup snapshot, so every start re-runs node's bootstrap JavaScript: ~3 s
// under TCG. Starting from this snapshot skips that. The snapshot pre-loads the built-in modules
// that user snapshots support and that hold no host state once loaded (not 'os': node 18 reads
// uname() when it loads, which would report the build host's kernel); at run time it loads process.argv[1] as the main module, exactly
// like `node FILE` (require.main === module holds), so any agent bundle works unchanged.
for (const name of ['fs', 'path', 'events', 'stream', 'util', 'buffer', 'timers', 'url', 'string_decoder', 'assert']) {
  require(name);
}
const load = require;
require('v8').startupSnapshot.setDeserializeMainFunction(() => {
  // Loading 'module' here is fine at run time; node 18 still warns that user snapshots do not
  // support it, so that one warning is dropped.
  const emitWarning = process.emitWarning;
  process.emitWarning = (w, ...rest) => {
    if (!String(w && w.message ? w.message : w).includes('not yet supported in user snapshots')) emitWarning.call(process, w, ...rest);
  };
  const Module = load('module');
  process.emitWarning = emitWarning;
  Module.runMain();
});
