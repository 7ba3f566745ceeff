// `--device nvme:…`: the NVMe controller's options and factory (devices/spec.ts).
import { blockOptions, blockSource, choiceOption, deviceSpec, intOption, textOption } from '../spec.js';
import { NvmeController } from './controller.js';

export const nvmeSpec = deviceSpec({
  name: 'nvme',
  summary: 'an NVMe SSD with one namespace stored in a file, a block device or memory (docs/devices.md)',
  options: {
    ...blockOptions,
    lba: choiceOption(['512', '4096'], 'LBA size (default 512)'),
    serial: textOption(20, 'serial number (default PCINET0001)'),
    model: textOption(40, "model name, '_' for spaces (default pcinet NVMe)"),
    fw: textOption(8, 'firmware revision (default 0.1.0)'),
    queues: intOption(1, 32, 'I/O queue pairs (default 8)'),
  },
  create: (o, card) =>
    new NvmeController({
      backend: card.block(blockSource('nvme', o)),
      lbaSize: o.lba === undefined ? undefined : Number(o.lba),
      serial: o.serial,
      model: o.model,
      firmware: o.fw,
      queues: o.queues,
    }),
});
