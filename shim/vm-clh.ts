// The cloud-hypervisor launcher: [hypervisor.clh] and the launch plan as a cloud-hypervisor VM.
import type { Hypervisor } from '../vmm/hypervisor.js';
import type { LaunchRequest } from './guest.js';
import type { LaunchPlan } from './vm.js';

export function clhHypervisor(_req: LaunchRequest, _p: LaunchPlan): Promise<Hypervisor> {
  return Promise.reject(new Error('hypervisor = "clh": the cloud-hypervisor driver is not built yet'));
}
