// Pod networking through sid's containerd 2.x (the suite: cri-network-suite.ts).
import { criNetworkSuite } from './cri-network-suite.js';

criNetworkSuite('sid');
