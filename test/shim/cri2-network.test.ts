// Pod networking through sid's containerd 2.x (the suite: cri-network-suite.ts). The create/delete
// cycles run on 1.7 only, unless KATATS_NET_CYCLES asks for them here too.
import { criNetworkSuite, netCycles } from './cri-network-suite.js';

criNetworkSuite('sid', { cycles: netCycles(0) });
