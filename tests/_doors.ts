/**
 * Helpers for tests of a shipper and several front doors: in-process
 * servers on one in-memory network, stdin in gated chunks, and vaults whose
 * appends a test watches or fails.
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { compileAllowlist } from "../lib/allowlist.ts";
import { AuditLog } from "../lib/audit.ts";
import { createJail } from "../lib/jail.ts";
import { Server, type ServerOptions } from "../lib/server/mod.ts";
import { readRecords } from "../lib/vault/read.ts";
import type { AppendBatch, Vault } from "../lib/vault/store.ts";
import { type MemoryNet, memoryNet } from "./_memory_conn.ts";

const te = new TextEncoder();
const td = new TextDecoder();

/** "line N xxx…\n" lines from..to. */
export function lines(from: number, to: number): string {
  let s = "";
  for (let i = from; i <= to; i++) s += `line ${i} ${"x".repeat(i % 40)}\n`;
  return s;
}

/** Front doors on one in-memory network. */
export class Doors {
  readonly net: MemoryNet = memoryNet();
  #servers: Server[] = [];
  #roots: string[] = [];

  /** A front door serving `vault`; other server options as given. */
  async open(
    vault: Vault,
    extra: Partial<ServerOptions> = {},
  ): Promise<{ server: Server; port: number }> {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "moat-door-"));
    this.#roots.push(root);
    const server = new Server({
      net: this.net,
      hosts: ["127.0.0.1"],
      port: 0,
      allowlist: compileAllowlist({}),
      jail: await createJail(root),
      audit: new AuditLog(() => {}),
      version: "0.0.0-test",
      vault,
      ...extra,
    });
    const [addr] = await server.listen();
    this.#servers.push(server);
    return { server, port: addr!.port };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.#servers.map((s) => s.close()));
    for (const root of this.#roots) {
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
}

/** Lines as stdin: each chunk after its gate opens. */
export async function* gated(parts: { text: string; gate?: Promise<void> }[]) {
  for (const part of parts) {
    await part.gate;
    yield te.encode(part.text);
  }
}

export function door(port: number) {
  return { hostname: "127.0.0.1", port };
}

/** The records of source "app" in the vault directory `dir`, as text. */
export async function stored(dir: string): Promise<string> {
  let out = "";
  for await (const r of readRecords(dir, { source: "app" })) {
    out += td.decode(r.line) + "\n";
  }
  return out;
}

/** The first and last sequence numbers of an append's records. */
export type Span = { first: number; last: number };

export function span(records: readonly { seq: number }[] | AppendBatch): Span {
  const n = records.length;
  if ("copyLine" in records) {
    return { first: records.seq(0), last: records.seq(n - 1) };
  }
  const list = records as readonly { seq: number }[];
  return { first: list[0]!.seq, last: list[n - 1]!.seq };
}

/**
 * The vault with its sources' appends watched: `onAppend` sees each batch's
 * span and may replace the append (given the real one).
 */
export function watched(
  vault: Vault,
  onAppend: (records: Span, append: () => Promise<unknown>) => Promise<unknown>,
): Vault {
  return new Proxy(vault, {
    get(target, prop) {
      if (prop === "source") {
        return (key: Parameters<Vault["source"]>[0]) => {
          const source = target.source(key);
          return new Proxy(source, {
            get(s, p) {
              if (p === "append") {
                return (
                  records: { seq: number }[] | AppendBatch,
                  ...rest: unknown[]
                ) =>
                  onAppend(
                    span(records),
                    () =>
                      (s.append as (...a: unknown[]) => Promise<unknown>)(
                        records,
                        ...rest,
                      ),
                  );
              }
              const v = Reflect.get(s, p, s);
              return typeof v === "function" ? v.bind(s) : v;
            },
          });
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

export function client(net: MemoryNet, port: number) {
  return {
    net,
    server: door(port),
    version: "0.0.0-test",
    timeoutMs: 10_000,
  };
}
