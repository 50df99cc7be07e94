export { Client, dialUnix, type CallOptions, type ClientOptions, type Dialer } from './client.js';
export { Server, ServerConnection, type CallContext, type RawHandler, type Interceptor, type ServerOptions } from './server.js';
export { removeStaleSocket, socketIsLive, SOCKET_PROBE_TIMEOUT_MS } from './socket-probe.js';
export { Code, TtrpcError, codeName, toStatus, type StatusDetail } from './status.js';
export { type Metadata } from './envelope.js';
export { DEFAULT_MAX_MESSAGE_SIZE, FrameType, FrameFlag, HEADER_LENGTH } from './frame.js';
