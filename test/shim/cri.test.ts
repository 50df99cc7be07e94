// A CRI pod on katats through bookworm's containerd 1.6 (the suite: cri-suite.ts).
import { criSuite } from './cri-suite.js';

criSuite('bookworm');
