// Pod networking through trixie's containerd 1.7 (the line AKS nodes run; the suite: cri-network-suite.ts),
// with a few networked create/delete cycles (KATATS_NET_CYCLES=20 for the full count), and the VM
// factory on: every katats pod is a template's clone with its two NICs hot-plugged (cri2-network.test.ts
// runs the suite on cold boots).
import { criNetworkSuite, netCycles } from './cri-network-suite.js';

criNetworkSuite('trixie', { cycles: netCycles(3), factory: true });
