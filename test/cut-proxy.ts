// An in-process TCP proxy on loopback that can cut every connection through it (both sides see a
// reset) or black-hole them (bytes stop flowing, sockets stay open) — for resume and keep-alive
// tests.
import net from 'node:net';

export class CutProxy {
  readonly #server: net.Server;
  readonly #pairs = new Set<[net.Socket, net.Socket]>();
  #blackhole = false;
  cuts = 0;
  connections = 0;
  port = 0;

  private constructor(targetPort: number, targetHost: string) {
    this.#server = net.createServer((client) => {
      this.connections++;
      const upstream = net.connect(targetPort, targetHost);
      const pair: [net.Socket, net.Socket] = [client, upstream];
      this.#pairs.add(pair);
      const end = () => {
        this.#pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      for (const [a, b] of [pair, [upstream, client] as const]) {
        a.on('data', (d) => {
          if (!this.#blackhole) b.write(d);
        });
        a.on('error', end);
        a.on('close', end);
      }
    });
  }

  static async start(targetPort: number, targetHost = '127.0.0.1'): Promise<CutProxy> {
    const p = new CutProxy(targetPort, targetHost);
    await new Promise<void>((res) => p.#server.listen(0, '127.0.0.1', res));
    p.port = (p.#server.address() as net.AddressInfo).port;
    return p;
  }

  /** Resets every connection through the proxy now. */
  cutAll(): number {
    const n = this.#pairs.size;
    for (const [a, b] of this.#pairs) {
      a.resetAndDestroy();
      b.resetAndDestroy();
    }
    this.#pairs.clear();
    this.cuts += n;
    return n;
  }

  /** Stops (true) or restarts forwarding bytes without closing anything. */
  blackhole(on: boolean): void {
    this.#blackhole = on;
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((res) => this.#server.close(() => res()));
  }
}
