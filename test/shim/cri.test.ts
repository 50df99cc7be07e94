// A CRI pod on katats through bookworm's containerd 1.6 (the suite: cri-suite.ts), with the VM
// factory on: the pods' VMs are clones of a template (cri2.test.ts runs the suite on cold boots).
import { criSuite } from './cri-suite.js';

criSuite('bookworm', { factory: true });
