// A CRI pod on katats through Debian sid's containerd 2.x, unpacked from its .deb (the suite: cri-suite.ts).
import { criSuite } from './cri-suite.js';

criSuite('sid');
