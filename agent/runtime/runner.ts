// The agent's native helper (agent/native/katats-runner.c): found and built by sys/runner.ts,
// which the shim uses too for its host modes. In the guest it sits next to the agent bundle; the
// guest image builder copies agent/dist/katats-runner.
export { RUNNER_NAME, buildRunner, findRunner, runnerSource } from '../../sys/runner.js';
