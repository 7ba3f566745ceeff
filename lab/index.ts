// The lab's programmatic API, for end-to-end tests and benchmarks.
export { labCommand } from './cli.js';
export { formatReports, type KernelReport, scanGuestLog } from './log-scan.js';
export { type LabAssets, type PrepareOptions, prepareLab } from './prepare.js';
export {
  DEFAULT_TIMEOUT_MS,
  guestSees,
  LabError,
  type LabFailureDetails,
  type LabFailureKind,
  type LabPhase,
  type LabResult,
  type RunInLabOptions,
  runInLab,
} from './run.js';
