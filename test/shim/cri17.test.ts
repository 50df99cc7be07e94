// A CRI pod on katats through Debian trixie's containerd 1.7 (the line AKS nodes run), unpacked from
// its .deb (the suite: cri-suite.ts).
import { criSuite } from './cri-suite.js';

criSuite('trixie');
