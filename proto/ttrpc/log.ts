import pino, { type Logger } from 'pino';

/** Libraries log nothing unless their user hands them a logger. */
export const silentLogger: Logger = pino({ enabled: false });
