/**
 * Which sources one `moat ship` ships, from which inputs. Each followed file
 * is a source of its own, named after the file (`/var/log/auth.log` →
 * `auth`); standard input is named after the host; `FILE=NAME` and `-=NAME`
 * name an input, and `--source NAME` names the one input left without a
 * name. Inputs given the same name explicitly share one source (one state,
 * one sequence), as every input of a shipper did before sources were per
 * file. Pure: no file or process access.
 *
 * @module
 */

import { basename, dirname, resolve } from "node:path";
import { UsageError } from "../errors.ts";
import { SYSLOG_SOURCE } from "../syslog.ts";
import { escapeText } from "../text.ts";

/** Longest source name the protocol accepts (characters). */
export const MAX_SOURCE_NAME = 128;
/** Largest `--config` file read, in bytes. */
export const MAX_CONFIG_BYTES = 1 << 20;
/** The standard input's path. */
const STDIN = "-";

/** One input as given: a file or standard input, with its name if given. */
export interface InputSpec {
  /** Absolute path, or `-` for standard input. */
  path: string;
  /** The source name given with `FILE=NAME`, if any. */
  name?: string;
}

/** One source to ship: its name and the inputs read into it. */
export interface ShipSource {
  /** The source name sent to the server. */
  name: string;
  /** Absolute paths, or `["-"]` for standard input. */
  inputs: string[];
}

/** Options for {@linkcode planSources}. */
export interface PlanSourcesOptions {
  /** `--source NAME`: names the one input given without a name. */
  source?: string | undefined;
  /** This host's name, the default name of standard input (asked only then). */
  hostname: () => string;
}

/**
 * Parses one input argument: `FILE`, `FILE=NAME`, `-` or `-=NAME`. The last
 * `=` separates the name, so a path that holds `=` must be named.
 *
 * @example Name a file and standard input
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseInputArg } from "./sources.ts";
 *
 * assert.deepEqual(parseInputArg("access.log=nginx", { cwd: "/var/log/nginx" }), {
 *   path: "/var/log/nginx/access.log",
 *   name: "nginx",
 * });
 * assert.deepEqual(parseInputArg("-=journal", { cwd: "/" }), { path: "-", name: "journal" });
 * assert.deepEqual(parseInputArg("/var/log/syslog", { cwd: "/" }), { path: "/var/log/syslog" });
 * ```
 *
 * @param arg The argument as typed.
 * @param options The directory relative paths are resolved against.
 * @returns The input.
 * @throws {UsageError} For an empty path or an empty name.
 */
export function parseInputArg(
  arg: string,
  options: { cwd: string },
): InputSpec {
  const eq = arg.lastIndexOf("=");
  const file = eq === -1 ? arg : arg.slice(0, eq);
  if (file === "") {
    throw new UsageError(
      `Invalid input "${
        escapeText(arg)
      }": expected FILE, FILE=NAME, - or -=NAME`,
    );
  }
  const path = file === STDIN ? STDIN : resolve(options.cwd, file);
  if (eq === -1) return { path };
  const name = arg.slice(eq + 1);
  if (name === "") {
    throw new UsageError(
      `Invalid input "${escapeText(arg)}": the source name after "=" is empty`,
    );
  }
  return { path, name };
}

/**
 * Parses a `--config` file: one input per line, `PATH` or `PATH=NAME`
 * (spaces around `=` are ignored), blank lines and lines starting with `#`
 * skipped. Relative paths are resolved against the file's folder.
 *
 * @example Two named files and a comment
 * ```ts
 * import assert from "node:assert/strict";
 * import { parseShipConfig } from "./sources.ts";
 *
 * const text = "# web\n/var/log/nginx/access.log = nginx-access\n\nauth.log\n";
 * assert.deepEqual(parseShipConfig(text, { file: "/etc/moat/ship.conf" }), [
 *   { path: "/var/log/nginx/access.log", name: "nginx-access" },
 *   { path: "/etc/moat/auth.log" },
 * ]);
 * ```
 *
 * @param text The file's text.
 * @param options The file's path (for relative paths and messages).
 * @returns The inputs, in order.
 * @throws {UsageError} Naming the line: standard input, an empty path or name.
 */
export function parseShipConfig(
  text: string,
  options: { file: string },
): InputSpec[] {
  const out: InputSpec[] = [];
  const cwd = dirname(resolve(options.file));
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const where = `--config "${escapeText(options.file)}" line ${i + 1}`;
    const eq = line.lastIndexOf("=");
    const file = (eq === -1 ? line : line.slice(0, eq)).trimEnd();
    const name = eq === -1 ? undefined : line.slice(eq + 1).trimStart();
    if (file === STDIN) {
      throw new UsageError(
        `Invalid ${where}: standard input ("-") can only be given on the command line`,
      );
    }
    if (file === "" || name === "") {
      throw new UsageError(
        `Invalid ${where}: expected PATH or PATH=NAME, got "${
          escapeText(line)
        }"`,
      );
    }
    const path = resolve(cwd, file);
    out.push(name === undefined ? { path } : { path, name });
  }
  return out;
}

/**
 * A followed file's default source name: its base name without a final
 * `.log` (`auth.log` → `auth`, `syslog` → `syslog`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { defaultSourceName } from "./sources.ts";
 *
 * assert.equal(defaultSourceName("/var/log/auth.log"), "auth");
 * assert.equal(defaultSourceName("/var/log/nginx/access.log.1"), "access.log.1");
 * assert.equal(defaultSourceName("/srv/.log"), ".log");
 * ```
 *
 * @param path The file's path.
 * @returns The name.
 */
export function defaultSourceName(path: string): string {
  const base = basename(path);
  return base.endsWith(".log") && base.length > 4 ? base.slice(0, -4) : base;
}

/** Why `name` cannot be a shipper's source name, or undefined if it can. */
function _badName(name: string): string | undefined {
  if (name.length > MAX_SOURCE_NAME) {
    return `is longer than ${MAX_SOURCE_NAME} characters`;
  }
  // deno-lint-ignore no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) return "contains a control character";
  if (name === SYSLOG_SOURCE) {
    return "is reserved for the syslog port";
  }
  return undefined;
}

function _shown(path: string): string {
  return path === STDIN ? 'standard input ("-")' : `"${escapeText(path)}"`;
}

/**
 * Groups inputs into sources: names each input (explicitly, by `--source`,
 * or by default), checks the names, and puts inputs named alike into one
 * source, in the order the sources were first named.
 *
 * @example The README's shapes
 * ```ts
 * import assert from "node:assert/strict";
 * import { planSources } from "./sources.ts";
 *
 * const hostname = () => "web1";
 * assert.deepEqual(
 *   planSources([{ path: "/var/log/auth.log" }, { path: "/var/log/kern.log" }], { hostname }),
 *   [{ name: "auth", inputs: ["/var/log/auth.log"] }, { name: "kern", inputs: ["/var/log/kern.log"] }],
 * );
 * assert.deepEqual(planSources([{ path: "-" }], { source: "journal", hostname }), [
 *   { name: "journal", inputs: ["-"] },
 * ]);
 * assert.throws(
 *   () => planSources([{ path: "/a/app.log" }, { path: "/b/app.log" }], { hostname }),
 *   /"\/a\/app.log" and "\/b\/app.log" would both be source "app"/,
 * );
 * ```
 *
 * @param inputs The inputs, in the order given.
 * @param options `--source` and this host's name.
 * @returns One entry per source.
 * @throws {UsageError} For no input, an input given twice, a `--source`
 * that names no input or more than one, two inputs that would share a
 * default name, standard input sharing a source, or a bad name.
 */
export function planSources(
  inputs: readonly InputSpec[],
  options: PlanSourcesOptions,
): ShipSource[] {
  if (inputs.length === 0) {
    throw new UsageError("ship needs FILE..., - or --config FILE");
  }
  const seen = new Set<string>();
  for (const input of inputs) {
    if (seen.has(input.path)) {
      throw new UsageError(`${_shown(input.path)} is given twice`);
    }
    seen.add(input.path);
  }
  const unnamed = inputs.filter((i) => i.name === undefined);
  if (options.source !== undefined) {
    if (unnamed.length === 0) {
      throw new UsageError(
        `--source "${
          escapeText(options.source)
        }" names no input: every input is named with FILE=NAME`,
      );
    }
    if (unnamed.length > 1) {
      const list = unnamed.map((i) => _shown(i.path)).join(", ");
      throw new UsageError(
        `--source names one input, but ${unnamed.length} have no name (${list}): ` +
          `name each as FILE=NAME (the same NAME for all ships them as one source)`,
      );
    }
  }
  const named: { path: string; name: string; given: boolean }[] = inputs.map(
    (input) => {
      if (input.name !== undefined) {
        return { path: input.path, name: input.name, given: true };
      }
      if (options.source !== undefined) {
        return { path: input.path, name: options.source, given: true };
      }
      const name = input.path === STDIN
        ? options.hostname()
        : defaultSourceName(input.path);
      return { path: input.path, name, given: false };
    },
  );
  for (const input of named) {
    const why = _badName(input.name);
    if (why === undefined) continue;
    const name = `"${escapeText(input.name)}"`;
    throw new UsageError(
      input.given
        ? `Invalid source name ${name} for ${_shown(input.path)}: it ${why}`
        : `${_shown(input.path)} would be source ${name}, which ${why}: ` +
          `name it as ${
            input.path === STDIN ? "-" : escapeText(input.path)
          }=NAME`,
    );
  }
  const sources = new Map<string, typeof named>();
  for (const input of named) {
    const group = sources.get(input.name) ?? [];
    group.push(input);
    sources.set(input.name, group);
  }
  for (const [name, group] of sources) {
    if (group.length < 2) continue;
    const shown = `"${escapeText(name)}"`;
    const stdin = group.find((i) => i.path === STDIN);
    if (stdin !== undefined) {
      const other = group.find((i) => i !== stdin)!;
      throw new UsageError(
        `Standard input ("-") must be a source of its own, but ${
          _shown(other.path)
        } would also be source ${shown}`,
      );
    }
    const byDefault = group.find((i) => !i.given);
    if (byDefault !== undefined) {
      const other = group.find((i) => i !== byDefault)!;
      const [a, b] = group.indexOf(other) < group.indexOf(byDefault)
        ? [other, byDefault]
        : [byDefault, other];
      throw new UsageError(
        `${_shown(a.path)} and ${
          _shown(b.path)
        } would both be source ${shown}: name them as FILE=NAME`,
      );
    }
  }
  return [...sources].map(([name, group]) => ({
    name,
    inputs: group.map((i) => i.path),
  }));
}
