// pcinet's release, as the package says it (package.json "version"): what `pcinet --version`,
// `pcinet status` and the host-agent's Hello agent string report. A test keeps the two in step.
export const VERSION = '0.1.0';
