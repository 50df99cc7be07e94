// A TypeScript ttrpc server in its own process, so TS<->TS figures do not share one event loop
// between client and server (the Go figures never do).
import { peerServer } from '../../test/interop/ts-peer.js';

const sock = process.argv[2];
if (!sock) throw new Error('usage: ttrpc-echo-server SOCKET');
const server = peerServer();
await server.listen(sock);
process.stdout.write('ready\n');
const stop = () => {
  server.close({ graceful: false }).then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
