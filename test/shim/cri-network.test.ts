// Pod networking through trixie's containerd 1.7 (the line AKS nodes run; the suite: cri-network-suite.ts).
import { criNetworkSuite } from './cri-network-suite.js';

criNetworkSuite('trixie');
