// The agent's entry point.
//   local mode: tsx agent/main.ts --listen /path/agent.sock --state-dir DIR
//   guest mode: node /agent/agent.js (channel from KATATS_AGENT_CHANNEL or --channel,
//               launch-data digest from KATATS_HOST_DATA or --host-data, default policy from
//               --policy-file, KATATS_POLICY_FILE or the image's /etc/kata-opa/default-policy.rego)
// Logs go to stderr (or --log-file), never to the channel.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createLogger } from './log.js';
import { createAgent } from './server.js';
import { detectCgroups } from './cgroups.js';
import { findRunner } from './runtime/runner.js';
import { readLaunchDigest } from './policy-hook.js';
import { AgentPort } from './channel.js';
import { DEFAULT_OUTPUT_BUFFER, type AgentConfig } from './config.js';
import { exitAfterFlush } from '../sys/exit.js';
import { DEFAULT_POLICY_PATH, allowAllPolicy } from '../policy/allow-all.js';
import { guestNetworkTools, netnsTools } from './network.js';
import { Keeper } from './keeper.js';
import { mountThrough } from './places.js';
import { startCdh } from './cdh-start.js';
import { applyInitdata, FW_CFG_INITDATA, loadInitdata } from './initdata-load.js';

/** The launch data as QEMU serves it (fw_cfg opt/katats/host_data). */
const FW_CFG_HOST_DATA = '/sys/firmware/qemu_fw_cfg/by_name/opt/katats/host_data/raw';

const usage = `usage: agent [--listen SOCK] [--channel DEV] [--state-dir DIR] [--copy-root DIR]
             [--host-data FILE] [--initdata FILE] [--policy-file FILE] [--runner PATH] [--crun PATH] [--crun-root DIR]
             [--sysfs DIR] [--cgroup-parent PATH] [--netns PATH] [--log-level LEVEL] [--log-file FILE]`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      listen: { type: 'string' },
      channel: { type: 'string' },
      'state-dir': { type: 'string' },
      'copy-root': { type: 'string' },
      'host-data': { type: 'string' },
      'policy-file': { type: 'string' },
      initdata: { type: 'string' },
      runner: { type: 'string' },
      crun: { type: 'string' },
      'crun-root': { type: 'string' },
      sysfs: { type: 'string' },
      'cgroup-parent': { type: 'string' },
      netns: { type: 'string' },
      'log-level': { type: 'string' },
      'log-file': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    process.stdout.write(usage + '\n');
    return;
  }
  const channel = values.channel ?? process.env.KATATS_AGENT_CHANNEL;
  const local = !!values.listen;
  if (!local && !channel) throw new Error(`neither --listen nor --channel/KATATS_AGENT_CHANNEL given\n${usage}`);
  const log = createLogger({ level: values['log-level'], file: values['log-file'] });
  const stateDir = path.resolve(values['state-dir'] ?? '/run/kata-containers');
  fs.mkdirSync(stateDir, { recursive: true });
  const hostData = values['host-data'] ?? process.env.KATATS_HOST_DATA;
  // In the guest the launch data is read from fw_cfg (at start, and again where a restore may have
  // changed it: agent/policy-hook.ts) rather than from the init's copy: a VM restored from a
  // template has its own fw_cfg but the template's copy.
  const liveLaunchData = !local && !!hostData && fs.existsSync(FW_CFG_HOST_DATA);
  const launchDigest = liveLaunchData ? () => readLaunchDigest(FW_CFG_HOST_DATA) : hostData ? readLaunchDigest(hostData) : undefined;
  // Initdata (fw_cfg in the guest): checked against the launch data once, at start; a VM with
  // initdata boots cold (a clone would carry the template's), so it is not read again.
  const initdataFile = values.initdata ?? (local ? undefined : FW_CFG_INITDATA);
  const initdata = initdataFile ? loadInitdata(initdataFile, typeof launchDigest === 'function' ? launchDigest() : launchDigest) : undefined;
  if (initdata && !initdata.ok) log.error({ problem: initdata.problem }, 'initdata refused: the agent refuses every request');
  const runner = findRunner(values.runner);
  // In the guest the image's default policy must be there: without it the agent does not serve
  // (as Kata's aborts), rather than run pods with no policy at all.
  const policyFile = values['policy-file'] ?? process.env.KATATS_POLICY_FILE ?? (local ? undefined : DEFAULT_POLICY_PATH);
  const defaultPolicy = policyFile ? { text: fs.readFileSync(policyFile, 'utf8'), source: policyFile } : { text: allowAllPolicy(), source: 'built-in allow-all' };
  const cdh = local ? undefined : await startCdh(log);
  // Kernel parameters that turn the runner cuts off, to measure them in one guest image.
  const cmdline = local ? [] : readCmdline();
  const runnersByKeeper = !cmdline.includes('katats.runner_spawn=node');
  const crunCopy = !cmdline.includes('katats.crun_copy=off');
  const crunFixedAddresses = cmdline.includes('katats.crun_aslr=off');
  const config: AgentConfig = {
    ...(cdh ? { cdh } : {}),
    stateDir,
    copyRoot: path.resolve(values['copy-root'] ?? path.join(stateDir, 'shared', 'containers')),
    runner,
    crun: values.crun ?? 'crun',
    crunRoot: values['crun-root'],
    sysfsRoot: values.sysfs ?? '/sys',
    cgroups: detectCgroups(),
    cgroupParent: values['cgroup-parent'] ?? '/katats',
    launchDigest: initdata?.ok ? initdata.policyDigest : launchDigest,
    ...(initdata && !initdata.ok ? { launchProblem: initdata.problem } : {}),
    defaultPolicy,
    setClock: !local,
    // Local mode too: its containers' runners are forked as in the guest (its mounts are not).
    keeper: Keeper.start(runner, log),
    runnersByKeeper,
    crunFixedAddresses,
    pciRescan: !local,
    // Local mode configures a network only in a namespace it is given: never the host's.
    ...(local ? (values.netns ? { network: netnsTools(values.netns, runner), netnsPath: values.netns } : {}) : { network: guestNetworkTools(runner), netnsPath: `/proc/${process.pid}/ns/net` }),
    outputBufferBytes: DEFAULT_OUTPUT_BUFFER,
    log,
  };
  const agent = createAgent(config);
  if (initdata?.ok) applyInitdata(initdata, agent.sandbox.policy, cdh, log);
  const keeper = config.keeper;
  // Before the template is saved: every clone's crun commands run from this one copy.
  if (crunCopy) keeper?.loadCrun(config.crun).catch((err: unknown) => log.warn({ err }, 'no sealed copy of crun: each crun command copies itself'));
  if (keeper && !local) mountThrough((source, target, fstype, flags, data) => keeper.mount(source, target, fstype, flags, data));
  log.info({ mode: local ? 'local' : 'guest', state_dir: stateDir, cgroups: config.cgroups.mode, runner: config.runner, node_flags: process.execArgv, crun_aslr: !crunFixedAddresses, launch_data: agent.sandbox.policy.launchDigest ?? null }, 'agent starting');
  if (values.listen) await agent.server.listen(values.listen);
  if (channel) {
    void new AgentPort(channel, (stream) => agent.server.serve(stream), log).run().catch((e: unknown) => {
      log.fatal({ err: e }, 'agent channel failed');
      process.exit(1);
    });
  }
  log.info({ listen: values.listen, channel }, 'agent serving');
  tellInitServing(log);
  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal: sig }, 'agent stopping');
    agent
      .shutdown()
      .catch((err: unknown) => log.error({ err }, 'agent shutdown failed'))
      .finally(() => exitAfterFlush((cb) => log.flush(cb), 0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

function readCmdline(): string[] {
  try {
    return fs.readFileSync('/proc/cmdline', 'utf8').trim().split(/\s+/);
  } catch {
    return [];
  }
}

/**
 * Tells katats-runner init (the guest's PID 1) that the agent runs: from then on an exit is the
 * agent's own, not node refusing its startup snapshot, and is never answered by a restart.
 */
function tellInitServing(log: { warn: (o: object, m: string) => void }): void {
  const fd = Number(process.env.KATATS_INIT_READY_FD);
  delete process.env.KATATS_INIT_READY_FD;
  if (!Number.isInteger(fd) || fd < 3) return;
  try {
    fs.writeSync(fd, 'r');
    fs.closeSync(fd);
  } catch (err) {
    log.warn({ err }, 'cannot tell the init the agent serves');
  }
}

// Channel reads block a thread-pool thread each; keep room for file system work.
process.env.UV_THREADPOOL_SIZE ??= '8';
main().catch((e) => {
  process.stderr.write(`katats-agent: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
