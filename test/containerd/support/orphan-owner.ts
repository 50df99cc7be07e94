// Starts a private containerd with one running container, prints "READY <dir> <namespace>" and waits
// to be killed: the reaper test kills it with SIGKILL, as a crashed test run would die.
import { startContainerd } from '../../../harness/containerd.js';
import { busyboxImage, BUSYBOX_INDEX } from '../../../harness/images/busybox.js';

const img = await busyboxImage();
const cd = await startContainerd();
await cd.importImage(img.archive, BUSYBOX_INDEX);
await cd.ctrOk(['run', '-d', ...cd.runtimeArgs('runc'), img.name, 'orphan', 'sleep', '600']);
process.stdout.write(`READY ${cd.dir} ${cd.namespace} ${cd.shimSocketPath('orphan')}\n`);
setInterval(() => {}, 60_000);
