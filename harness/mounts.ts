// Mounts under a directory (from /proc/self/mountinfo) and their removal, deepest first.
export { mountsUnder, unmountAll as unmountUnder } from '../sys/mount.js';
