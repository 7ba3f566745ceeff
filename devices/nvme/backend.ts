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
  /** Everything written so far is on stable storage when this resolves. */
  flush(): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  /** The range reads zeros afterwards and its space may be freed. */
  discard(offset: number, length: number): Promise<void>;
  close(): Promise<void>;
}

/** An I/O error of a backend, with the errno code the model maps to an NVMe status. */
export class BlockError extends Error {
  override readonly name = 'BlockError';
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}
