// What the NVMe model stores its namespace in. Implementations live with the endpoint
// (endpoint/backends/block.ts: a file, a block device, memory); the model only sees this.

export interface BlockBackend {
  /** Bytes. */
  readonly size: number;
  /** What it is, for logs: "file /srv/disk.img", "memory" … */
  readonly name: string;
  /** A buffer of the caller's own (never one the backend keeps or reuses). */
  read(offset: number, length: number): Promise<Uint8Array>;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** What read() would resolve with, when it can be had without waiting (a file in memory, bytes
   *  the page cache holds): otherwise undefined, and the caller calls read(). Throws what read()
   *  would reject with. `into` (at least `length` bytes): read into it, and answer its first
   *  `length` bytes, instead of a buffer of the backend's. Optional: without it, every read waits. */
  readNow?(offset: number, length: number, into?: Uint8Array): Uint8Array | undefined;
  /** write() done at once, when it need not wait: true if done, false if the caller must call
   *  write(). Throws what write() would reject with. Optional, as readNow. */
  writeNow?(offset: number, data: Uint8Array): boolean;
  /** Everything written so far is on stable storage when this resolves. */
  flush(): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  /** The range reads zeros afterwards and its space may be freed. */
  discard(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}

/** The BlockBackend call that failed. */
export type BlockOp = 'read' | 'write' | 'flush' | 'writeZeroes' | 'discard';

/**
 * An I/O error of a backend. Models choose their status from `code` (the errno name, as Node
 * reports it: 'EIO', 'ENOSPC' …) and `op`, never from `message`, which is for logs only.
 */
export class BlockError extends Error {
  override readonly name = 'BlockError';
  constructor(
    readonly code: string,
    readonly op: BlockOp,
    message: string,
  ) {
    super(message);
  }
}
