// Every device model `--device` knows, in help order. A new model exports its DeviceSpec
// (devices/spec.ts) and is added here: one import, one entry (docs/devices.md, "Adding a device").
import { nvmeSpec } from './nvme/device-spec.js';
import { replaySpec } from './replay/device.js';
import type { DeviceSpec } from './spec.js';
import { testDeviceSpec } from './test/device.js';
import { virtioBlkSpec } from './virtio-blk/device.js';
import { virtioNetSpec } from './virtio-net/device.js';
import { virtioRngSpec } from './virtio-rng/device.js';

export const MODELS: readonly DeviceSpec[] = [
  testDeviceSpec,
  nvmeSpec,
  virtioNetSpec,
  virtioBlkSpec,
  virtioRngSpec,
  replaySpec,
];
