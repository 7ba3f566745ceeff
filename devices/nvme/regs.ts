// The NVMe controller's BAR 0 registers (NVMe 1.4 §3.1): the controller properties, then a doorbell
// pair per queue from 0x1000 (stride 4). Only writes with side effects have handlers: CC (enable,
// reset, shutdown) and the doorbells.
import { type Register, type RegisterTable, registers } from '../pci/index.js';
import type { NvmeController } from './controller.js';
import { doorbellAt, MAX_QUEUE_ENTRIES } from './queues.js';
import { REG } from './spec.js';

/** BAR 0's registers, with a doorbell pair per queue (admin and `queues` I/O queues). */
export function nvmeRegisters(queues: number): RegisterTable<NvmeController> {
  const cap =
    BigInt(MAX_QUEUE_ENTRIES - 1) | // MQES
    (1n << 16n) | // CQR: queues must be physically contiguous
    (20n << 24n) | // TO: 10 s to become ready, in 500 ms units
    (1n << 37n); // CSS: the NVM command set
  const regs: Register<NvmeController>[] = [
    { name: 'CAP', at: REG.CAP, size: 8, access: 'ro', reset: cap },
    { name: 'VS', at: REG.VS, size: 4, access: 'ro', reset: 0x00010400 },
    { name: 'INTMS', at: REG.INTMS, size: 4, access: 'rw' }, // MSI-X: masks are in the table
    { name: 'INTMC', at: REG.INTMC, size: 4, access: 'rw' },
    {
      name: 'CC',
      at: REG.CC,
      size: 4,
      access: 'rw',
      mask: 0x00fffff1,
      onWrite: (c, v, old) => c.ccWritten(v, old),
    },
    { name: 'CSTS', at: REG.CSTS, size: 4, access: 'ro' },
    { name: 'NSSR', at: REG.NSSR, size: 4, access: 'ro' },
    { name: 'AQA', at: REG.AQA, size: 4, access: 'rw', mask: 0x0fff0fff },
    { name: 'ASQ', at: REG.ASQ, size: 8, access: 'rw', mask: ~0xfffn & ((1n << 64n) - 1n) },
    { name: 'ACQ', at: REG.ACQ, size: 8, access: 'rw', mask: ~0xfffn & ((1n << 64n) - 1n) },
  ];
  for (let y = 0; y <= queues; y++) {
    for (const cq of [false, true]) {
      regs.push({
        name: `${cq ? 'CQ' : 'SQ'}${y}${cq ? 'HDBL' : 'TDBL'}`,
        at: REG.DOORBELLS + doorbellAt(y, cq),
        size: 4,
        access: 'wo',
        doorbell: true,
        onWrite: (c, v) => c.doorbell(y, cq, v),
      });
    }
  }
  return registers(regs);
}
