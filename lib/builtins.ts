/**
 * The runtime's built-in modules that most commands never use, loaded on
 * first use instead of at start-up.
 *
 * A release binary is one bundle, and the bundler hoists every static
 * `import … from "node:…"` of every command to its top, so `moat serve`
 * evaluated `node:tls`, `node:zlib`, `node:inspector`, `node:dns/promises`,
 * `node:stream` and `node:os` before its first line ran, whether it served
 * TLS, a file or nothing yet (Bun 1.4.5, `--compile --bytecode`: a test
 * binary importing those six started about 4 ms later than one without;
 * `moat serve`, which still asks `node:inspector` at start-up, went from
 * 20.1 to 18.6 ms of CPU to its listening line, medians of 30 interleaved
 * starts). `process.getBuiltinModule` (Deno and Bun both have it) loads one
 * when it is first asked for; each getter here keeps what it got. Import
 * the types with `import type`.
 *
 * @module
 */

import process from "node:process";

type Dns = typeof import("node:dns/promises");
type Inspector = typeof import("node:inspector");
type Os = typeof import("node:os");
type Stream = typeof import("node:stream");
type Tls = typeof import("node:tls");
type Zlib = typeof import("node:zlib");

let dnsModule: Dns | undefined;
let inspectorModule: Inspector | undefined;
let osModule: Os | undefined;
let streamModule: Stream | undefined;
let tlsModule: Tls | undefined;
let zlibModule: Zlib | undefined;

function load<T>(name: string): T {
  return process.getBuiltinModule(name) as T;
}

/** @returns `node:dns/promises`. */
export function dns(): Dns {
  return dnsModule ??= load<Dns>("node:dns/promises");
}

/** @returns `node:inspector`. */
export function inspector(): Inspector {
  return inspectorModule ??= load<Inspector>("node:inspector");
}

/** @returns `node:os`. */
export function os(): Os {
  return osModule ??= load<Os>("node:os");
}

/** @returns `node:stream`. */
export function stream(): Stream {
  return streamModule ??= load<Stream>("node:stream");
}

/** @returns `node:tls`. */
export function tls(): Tls {
  return tlsModule ??= load<Tls>("node:tls");
}

/** @returns `node:zlib`. */
export function zlib(): Zlib {
  return zlibModule ??= load<Zlib>("node:zlib");
}
