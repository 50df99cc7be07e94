// Pod networking through trixie's containerd 1.7 (the line AKS nodes run; the suite: cri-network-suite.ts),
// with a few networked create/delete cycles (KATATS_NET_CYCLES=20 for the full count).
import { criNetworkSuite, netCycles } from './cri-network-suite.js';

criNetworkSuite('trixie', { cycles: netCycles(3) });
