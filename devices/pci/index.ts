// The PCI core: config-space builder, capabilities, register declarations, BAR storage, the
// description sent in Attach, and PciDevice, the base of declarative device models.
export * from './bar.js';
export * from './caps.js';
export * from './config.js';
export * from './describe.js';
export * from './device.js';
export * from './le.js';
export * from './registers.js';
