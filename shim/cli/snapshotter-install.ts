// What `katats install` prints for the tardev snapshotter: a systemd unit running
// `katats snapshotter serve`, and the containerd configuration that registers it as the proxy
// plugin `tardev` and (containerd 1.7+) selects it for the katats runtime handler's pods. Printed,
// not written: moving a handler's pods to another snapshotter is the operator's decision.
import { stringify as toToml } from 'smol-toml';
import { DEFAULTS } from '../../snapshotter/main.js';

export const SNAPSHOTTER_NAME = 'tardev';
const ARCH = ({ x64: 'amd64', arm64: 'arm64' } as Record<string, string>)[process.arch] ?? process.arch;

export function snapshotterUnit(katats: string): string {
  return [
    '[Unit]',
    'Description=katats tardev snapshotter (image layers as dm-verity protected layer files, a containerd proxy plugin)',
    'Before=containerd.service',
    '',
    '[Service]',
    `ExecStart=${katats} snapshotter serve --root ${DEFAULTS.root} --address ${DEFAULTS.address} --containerd ${DEFAULTS.containerd} --log /var/log/katats/snapshotter.log`,
    'Restart=always',
    'RestartSec=1',
    // Layer mounts must be visible to containerd: no private mount namespace. SIGTERM lets
    // requests under way finish; layer mounts stay for the next start.
    'PrivateMounts=no',
    'KillMode=process',
    'LimitNOFILE=1048576',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** The containerd config snippet for a config of `version` (2: containerd 1.x, 3: 2.x); `handler` is the CRI runtime handler. */
export function snapshotterConfig(version: 2 | 3, handler: string): string {
  const proxy = { proxy_plugins: { [SNAPSHOTTER_NAME]: { type: 'snapshot', address: DEFAULTS.address } } };
  const cri =
    version === 2
      ? {
          plugins: {
            'io.containerd.grpc.v1.cri': {
              // CRI tells snapshotters which layer they unpack only when this is false.
              containerd: { disable_snapshot_annotations: false, runtimes: { [handler]: { snapshotter: SNAPSHOTTER_NAME } } },
            },
          },
        }
      : {
          plugins: {
            'io.containerd.cri.v1.images': { disable_snapshot_annotations: false, runtime_platforms: { [handler]: { snapshotter: SNAPSHOTTER_NAME } } },
            'io.containerd.cri.v1.runtime': { containerd: { runtimes: { [handler]: { snapshotter: SNAPSHOTTER_NAME } } } },
            // ctr import/pull go through the transfer service, which unpacks only into the
            // snapshotters named here (naming any drops its default, overlayfs).
            'io.containerd.transfer.v1.local': {
              unpack_config: [
                { platform: `linux/${ARCH}`, snapshotter: 'overlayfs' },
                { platform: `linux/${ARCH}`, snapshotter: SNAPSHOTTER_NAME },
              ],
            },
          },
        };
  return `${toToml(proxy)}\n\n${toToml(cri)}\n`;
}

export function snapshotterInstructions(katats: string, version: 2 | 3, handler: string): string {
  return [
    'The tardev snapshotter (optional): pods of this handler then get their image layers as read-only',
    'layer files checked by dm-verity in the guest. As /etc/systemd/system/katats-snapshotter.service:',
    '',
    snapshotterUnit(katats),
    `and in containerd's configuration (version ${version}; per-handler snapshotters need containerd 1.7+,`,
    `on 1.6 use \`ctr --snapshotter ${SNAPSHOTTER_NAME}\`):`,
    '',
    snapshotterConfig(version, handler),
  ].join('\n');
}
