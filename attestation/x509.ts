// @peculiar/x509 resolves its algorithm providers through tsyringe, which needs the Reflect metadata
// API installed before the library loads: every module of ours takes x509 from here.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
export { x509 };
