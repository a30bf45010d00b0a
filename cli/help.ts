/**
 * `moat --help` (the command list) and `moat --version`.
 *
 * @module
 */

import { VERSION } from "../lib/version.ts";
import { runtimeInfo } from "../lib/net/mod.ts";
import {
  type CommandSpec,
  environmentOf,
  formatRow,
  listWords,
} from "./options.ts";
import { printLine } from "./output.ts";

/**
 * The text of `moat --help`: the commands with their summaries, the global
 * options, and every environment variable any command reads.
 *
 * @param commands The commands, in the order to list them.
 * @returns The text, ending in a newline.
 */
export function formatMainHelp(commands: readonly CommandSpec[]): string {
  const rows: [string, string][] = [
    ...commands.map((c): [string, string] => [c.name, c.summary]),
    ["help", "Show help for a command: moat help <command>"],
  ];
  const width = Math.max(...rows.map(([n]) => n.length)) + 2;
  const readers = new Map<string, string[]>();
  for (const c of commands) {
    for (const e of environmentOf(c)) {
      readers.set(e.name, [...(readers.get(e.name) ?? []), c.name]);
    }
  }
  const envWidth = Math.max(...[...readers.keys()].map((n) => n.length)) + 4;
  return [
    `moat ${VERSION} — a guarded socket tool`,
    "Usage: moat <command> [options]",
    [
      "Commands:",
      ...rows.map(([name, summary]) => `  ${name.padEnd(width)}${summary}`),
    ].join("\n"),
    [
      "Options:",
      "  -h, --help     Show help",
      "  -V, --version  Show the version, runtime and target",
    ].join("\n"),
    [
      "Environment:",
      ...[...readers].map(([name, by]) =>
        formatRow(`  ${name}`, `read by ${listWords(by, "and")}`, envWidth)
      ),
    ].join("\n"),
    "Each command's --help lists its options, environment and exit codes.",
  ].join("\n\n") + "\n";
}

/**
 * Prints `moat --version`: version, runtime and build target.
 *
 * @param target The release target, or "script" when run from source.
 */
export function printVersion(target: string): void {
  const rt = runtimeInfo();
  printLine(`moat ${VERSION} (${rt.runtime} ${rt.version}; ${target})`);
}
