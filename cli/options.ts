/**
 * The option-table machinery: one declarative table per command generates
 * the `node:util` `parseArgs` configuration, the `--help` text and the
 * validation, so a default, a bound or an environment variable is written
 * once. parseArgs runs in its non-strict mode, as a tokenizer only: every
 * check is ours, so none of its sentences (which differ between runtimes)
 * reaches the user.
 *
 * @module
 */

import { parseArgs } from "node:util";
import * as fs from "node:fs";
import { UsageError } from "../lib/errors.ts";
import { escapeText } from "../lib/text.ts";

/**
 * How an option's value is read: `boolean` takes none, `string` any,
 * `integer` whole decimal digits within `min`/`max`, and `file` the path of
 * an existing, readable file (checked before the command runs, so a missing
 * file is reported with its path and "no such file or directory").
 */
export type OptionType = "boolean" | "string" | "integer" | "file";

/** One row of an option table, keyed by its long name (without dashes). */
export interface OptionSpec {
  /** How the value is read and checked. */
  type: OptionType;
  /** One-letter alias, used as `-x`. */
  short?: string;
  /** The value's name in `--help`, e.g. `"N"` or `"FILE"`. */
  placeholder?: string;
  /** One sentence for `--help`, without the default. */
  description: string;
  /** The value when the option is absent; shown in `--help`. */
  default?: string | number;
  /** Shown in `--help` instead of `default` (or when the default is computed). */
  defaultText?: string;
  /** Smallest integer accepted (`integer`). @default {0} */
  min?: number;
  /** Largest integer accepted (`integer`). */
  max?: number;
  /** The only values accepted (`string`). */
  choices?: readonly string[];
  /** May be given more than once; the values are collected in order. */
  multiple?: boolean;
  /** Environment variable read when the option is absent. */
  env?: string;
  /** Heading of the `--help` section; ungrouped options go under "Options:". */
  group?: string;
}

/** An option table: long name → row, in `--help` order. */
export type OptionTable = Record<string, OptionSpec>;

/** An environment variable a command reads, for `--help`. */
export interface EnvSpec {
  name: string;
  description: string;
}

/** An exit status a command may end with, for `--help`. */
export interface ExitSpec {
  code: number;
  description: string;
}

/** Everything `--help` and the parser know about one command. */
export interface CommandSpec<O extends OptionTable = OptionTable> {
  /** As typed after `moat`, e.g. `"get"` or `"vault cat"`. */
  name: string;
  /** One line for the command list of `moat --help`. */
  summary: string;
  /** Lines after "Usage: ", without "moat". */
  usage: readonly string[];
  /** Paragraphs between the usage and the options. */
  description: string;
  options: O;
  /** Whether arguments other than options are accepted. @default {false} */
  positionals?: boolean;
  /** Variables read other than through an option's `env`. */
  env?: readonly EnvSpec[];
  exits: readonly ExitSpec[];
  /** Paragraph after everything else. */
  notes?: string;
}

type OptionValue<S extends OptionSpec> = S["type"] extends "boolean" ? boolean
  : S extends { multiple: true }
    ? S["type"] extends "integer" ? number[] : string[]
  : S["type"] extends "integer"
    ? S extends { default: number } ? number : number | undefined
  : S extends { choices: readonly (infer C)[] }
    ? S extends { default: string } ? C : C | undefined
  : S extends { default: string } ? string
  : string | undefined;

/** Parsed, checked values of a table: defaults applied, integers as numbers. */
export type OptionValues<O extends OptionTable> = {
  -readonly [K in keyof O]: OptionValue<O[K]>;
};

/** One option as given on the command line, in order (for systemd units). */
export interface GivenOption {
  name: string;
  value?: string | undefined;
}

/** The outcome of {@linkcode parseCommand}. */
export type ParsedCommand<O extends OptionTable> =
  | { help: true }
  | {
    help: false;
    values: OptionValues<O>;
    positionals: string[];
    given: GivenOption[];
  };

/** What every command has: `-h`, `--help`. */
const HELP_OPTION = {
  type: "boolean",
  short: "h",
  description: "Show this help",
} as const satisfies OptionSpec;

/** Exit statuses every command can end with. */
export const COMMON_EXITS: readonly ExitSpec[] = [
  { code: 0, description: "success" },
  { code: 1, description: "failure (the message says which)" },
  { code: 2, description: "bad usage: an unknown option or a bad value" },
];

/**
 * The `parseArgs` configuration of an option table.
 *
 * @param options An option table.
 * @returns `parseArgs`'s `options`, with `help`/`-h` added.
 *
 * @example Integers and files are strings to parseArgs
 * ```ts
 * import { parseArgsConfig } from "./options.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(
 *   parseArgsConfig({ port: { type: "integer", description: "Port" } }),
 *   { port: { type: "string" }, help: { type: "boolean", short: "h" } },
 * );
 * ```
 */
export function parseArgsConfig(
  options: OptionTable,
): Record<
  string,
  { type: "string" | "boolean"; short?: string; multiple?: boolean }
> {
  const config: Record<
    string,
    { type: "string" | "boolean"; short?: string; multiple?: boolean }
  > = {};
  const table: OptionTable = { ...options, help: HELP_OPTION };
  for (const [name, spec] of Object.entries(table)) {
    config[name] = {
      type: spec.type === "boolean" ? "boolean" : "string",
      ...(spec.short !== undefined && { short: spec.short }),
      ...(spec.multiple && { multiple: true }),
    };
  }
  return config;
}

/**
 * Parses and checks a command's arguments against its table.
 *
 * @param spec The command.
 * @param args The arguments after the command's name.
 * @param options The environment, for options with `env`.
 * @returns `{ help: true }` if `-h`/`--help` was given, else the values.
 * @throws {UsageError} One line naming the bad argument: an unknown option
 * (with a suggestion when one is close), a missing or unexpected value, a
 * value out of range, a missing file.
 *
 * @example Defaults apply and integers are checked
 * ```ts
 * import { parseCommand } from "./options.ts";
 * import assert from "node:assert/strict";
 * const spec = {
 *   name: "demo", summary: "", usage: ["demo"], description: "", exits: [],
 *   options: { port: { type: "integer", default: 4320, description: "Port" } },
 * } as const;
 * const parsed = parseCommand(spec, []);
 * assert.ok(!parsed.help && parsed.values.port === 4320);
 * assert.throws(
 *   () => parseCommand(spec, ["--port", "-1"]),
 *   /Invalid --port "-1": expected an integer ≥ 0/,
 * );
 * ```
 */
export function parseCommand<O extends OptionTable>(
  spec: CommandSpec<O>,
  args: readonly string[],
  options: { env?: Record<string, string | undefined> } = {},
): ParsedCommand<O> {
  const table: OptionTable = { ...spec.options, help: HELP_OPTION };
  const { tokens } = parseArgs({
    args: [...args],
    options: parseArgsConfig(spec.options),
    allowPositionals: true,
    strict: false,
    tokens: true,
  });
  const see = `see moat ${spec.name} --help`;
  const given: GivenOption[] = [];
  const raw = new Map<string, string[]>();
  const positionals: string[] = [];
  let help = false;
  for (const token of tokens) {
    if (token.kind === "positional") {
      if (!spec.positionals) {
        throw new UsageError(
          `Unexpected argument "${escapeText(token.value)}" (${see})`,
        );
      }
      positionals.push(token.value);
      continue;
    }
    if (token.kind !== "option") continue;
    const row = Object.hasOwn(table, token.name)
      ? table[token.name]
      : undefined;
    if (row === undefined) {
      throw new UsageError(
        unknownOption(token.rawName, Object.keys(table), see),
      );
    }
    // As typed (-o or --out), for errors about this argument itself.
    const label = token.rawName;
    if (row.type === "boolean") {
      if (token.value !== undefined) {
        throw new UsageError(`Option ${label} takes no value`);
      }
      if (token.name === "help") help = true;
      given.push({ name: token.name });
      raw.set(token.name, []);
      continue;
    }
    const value = token.value;
    if (value === undefined) {
      throw new UsageError(
        `Missing value for ${label}: expected ${row.placeholder ?? "a value"}`,
      );
    }
    // parseArgs takes the next argument as the value even if it starts with
    // "-"; only a negative number is plausibly meant as one.
    if (
      !token.inlineValue && value.length > 1 && value.startsWith("-") &&
      !(row.type === "integer" && /^-\d/.test(value))
    ) {
      const shown = escapeText(value);
      throw new UsageError(
        `Missing value for ${label}: expected ${
          row.placeholder ?? "a value"
        } before "${shown}" (write --${token.name}=${shown} if "${shown}" is the value)`,
      );
    }
    given.push({ name: token.name, value });
    if (row.multiple) {
      raw.set(token.name, [...(raw.get(token.name) ?? []), value]);
    } else raw.set(token.name, [value]);
  }
  if (help) return { help: true };

  const values: Record<string, unknown> = {};
  for (const [name, row] of Object.entries(spec.options)) {
    if (row.type === "boolean") {
      values[name] = raw.has(name);
      continue;
    }
    let texts = raw.get(name);
    let label = `--${name}`;
    if (texts === undefined && row.env !== undefined) {
      const fromEnv = options.env?.[row.env];
      if (fromEnv !== undefined && fromEnv !== "") {
        texts = [fromEnv];
        label = `$${row.env}`;
      }
    }
    values[name] = texts === undefined
      ? defaultOf(row)
      : row.multiple
      ? texts.map((t) => checkValue(row, label, t))
      : checkValue(row, label, texts[0]!);
  }
  return {
    help: false,
    values: values as OptionValues<O>,
    positionals,
    given,
  };
}

function defaultOf(row: OptionSpec): unknown {
  if (row.multiple) return [];
  return row.default;
}

function checkValue(row: OptionSpec, label: string, text: string): unknown {
  const shown = escapeText(text);
  switch (row.type) {
    case "integer": {
      const min = row.min ?? 0;
      const n = Number(text);
      if (
        !/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < min ||
        (row.max !== undefined && n > row.max)
      ) {
        throw new UsageError(
          `Invalid ${label} "${shown}": expected ${describeInteger(row)}`,
        );
      }
      return n;
    }
    case "file": {
      const problem = unreadable(text);
      if (problem !== undefined) {
        throw new UsageError(`Cannot read ${label} "${shown}": ${problem}`);
      }
      return text;
    }
    default:
      if (row.choices !== undefined && !row.choices.includes(text)) {
        throw new UsageError(
          `Unknown ${label} "${shown}": use ${listWords(row.choices, "or")}`,
        );
      }
      return text;
  }
}

function describeInteger(row: OptionSpec): string {
  const min = row.min ?? 0;
  return row.max === undefined
    ? `an integer ≥ ${min}`
    : `an integer ≥ ${min} and ≤ ${row.max}`;
}

/** Why `file` cannot be read as a file, or undefined if it can. */
function unreadable(file: string): string | undefined {
  try {
    if (fs.statSync(file).isDirectory()) return "is a directory";
    fs.accessSync(file, fs.constants.R_OK);
    return undefined;
  } catch (err) {
    return describeFsError(err);
  }
}

/**
 * A file-system error as words, e.g. "no such file or directory" for
 * ENOENT, so that a message names the problem rather than an errno code.
 *
 * @param err What a `node:fs` call threw.
 * @returns A lower-case phrase.
 *
 * @example
 * ```ts
 * import { describeFsError } from "./options.ts";
 * import assert from "node:assert/strict";
 * assert.equal(describeFsError({ code: "ENOENT" }), "no such file or directory");
 * ```
 */
export function describeFsError(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  switch (code) {
    case "ENOENT":
      return "no such file or directory";
    case "EACCES":
    case "EPERM":
      return "permission denied";
    case "EISDIR":
      return "is a directory";
    case "ENOTDIR":
      return "a part of the path is not a directory";
    case "ELOOP":
      return "too many levels of symbolic links";
    case "ENOSPC":
      return "no space left on the device";
    case "EROFS":
      return "read-only file system";
  }
  if (typeof code === "string") return code;
  return err instanceof Error ? err.message : String(err);
}

function unknownOption(
  raw: string,
  names: readonly string[],
  see: string,
): string {
  const long = raw.startsWith("--");
  const near = long ? suggest(raw.slice(2), names) : [];
  const hint = near.length > 0
    ? `did you mean ${listWords(near.map((n) => `--${n}`), "or")}?`
    : see;
  return `Unknown option "${escapeText(raw)}" (${hint})`;
}

/**
 * The candidates closest to a mistyped word, for "did you mean": those at the
 * smallest edit distance (a transposition counts as one edit), if that is at
 * most a third of the word's length (and at least 1).
 *
 * @param word What was typed.
 * @param candidates The words it could have meant.
 * @returns The closest candidates, in their given order; empty if none is close.
 *
 * @example
 * ```ts
 * import { suggest } from "./options.ts";
 * import assert from "node:assert/strict";
 * assert.deepEqual(suggest("serv", ["serve", "get", "ship"]), ["serve"]);
 * assert.deepEqual(suggest("frobnicate", ["serve", "get"]), []);
 * ```
 */
export function suggest(
  word: string,
  candidates: readonly string[],
): string[] {
  const limit = Math.max(1, Math.floor(word.length / 3));
  let best = limit + 1;
  let found: string[] = [];
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < best) {
      best = d;
      found = [c];
    } else if (d === best) {
      found.push(c);
    }
  }
  return found;
}

/**
 * The optimal-string-alignment distance: insertions, deletions,
 * substitutions and transpositions of neighbours each cost 1.
 *
 * @param a A word.
 * @param b Another word.
 * @returns The number of edits that turn `a` into `b`.
 *
 * @example
 * ```ts
 * import { editDistance } from "./options.ts";
 * import assert from "node:assert/strict";
 * assert.equal(editDistance("prot", "port"), 1);
 * assert.equal(editDistance("kitten", "sitting"), 3);
 * ```
 */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    rows.push([i, ...new Array<number>(b.length).fill(0)]);
  }
  for (let j = 0; j <= b.length; j++) rows[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    const row = rows[i]!;
    const up = rows[i - 1]!;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(up[j]! + 1, row[j - 1]! + 1, up[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      }
      row[j] = d;
    }
  }
  return rows[a.length]![b.length]!;
}

/**
 * The error for a word that names no command (or subcommand): with a
 * suggestion when one is close, else a pointer to the help.
 *
 * @param what What was expected, e.g. `"command"` or `"vault command"`.
 * @param word What was typed.
 * @param options The valid words, and the help to point to.
 * @returns A {@linkcode UsageError} to throw.
 */
export function unknownWord(
  what: string,
  word: string,
  options: { candidates: readonly string[]; see: string },
): UsageError {
  const near = suggest(word, options.candidates);
  const hint = near.length > 0
    ? `did you mean ${listWords(near, "or")}?`
    : options.see;
  return new UsageError(
    `Unknown ${what} "${escapeText(word)}" (${hint})`,
  );
}

/**
 * Words as a list in a sentence: "a", "a or b", "a, b or c".
 *
 * @param words The words.
 * @param conjunction "or", "and".
 * @returns The sentence fragment.
 */
export function listWords(
  words: readonly string[],
  conjunction: string,
): string {
  if (words.length <= 1) return words.join("");
  return `${words.slice(0, -1).join(", ")} ${conjunction} ${words.at(-1)}`;
}

const WIDTH = 80;
/** Widest left column before the description moves to its own line. */
const MAX_LEFT = 24;

/**
 * The `--help` text of a command, generated from its table: usage,
 * description, options by group with their defaults, environment variables
 * and exit statuses.
 *
 * @param spec The command.
 * @returns The text, ending in a newline.
 */
export function formatHelp(spec: CommandSpec): string {
  const [first, ...more] = spec.usage;
  const parts = [
    [
      `Usage: moat ${first}`,
      ...more.map((u) => `       moat ${u}`),
    ].join("\n"),
  ];
  if (spec.description !== "") parts.push(spec.description.trimEnd());

  const groups = new Map<string, [string, OptionSpec][]>([["Options", []]]);
  for (const [name, row] of Object.entries(spec.options)) {
    const group = row.group ?? "Options";
    groups.set(group, [...(groups.get(group) ?? []), [name, row]]);
  }
  groups.get("Options")!.push(["help", HELP_OPTION]);
  const lefts = [...groups.values()].flat().map(([n, r]) => optionLeft(n, r));
  const left = Math.min(MAX_LEFT, Math.max(...lefts.map((l) => l.length)) + 2);
  for (const [title, rows] of groups) {
    if (rows.length === 0) continue;
    parts.push(
      [
        `${title}:`,
        ...rows.map(([name, row]) =>
          formatRow(optionLeft(name, row), optionText(row), left)
        ),
      ].join("\n"),
    );
  }

  const env = environmentOf(spec);
  if (env.length > 0) {
    const w = Math.max(...env.map((e) => e.name.length)) + 4;
    parts.push(
      [
        "Environment:",
        ...env.map((e) => formatRow(`  ${e.name}`, e.description, w)),
      ].join("\n"),
    );
  }
  // Wide enough for a three-digit status (130, 141) beside its meaning.
  const codeWidth = Math.max(
    6,
    ...spec.exits.map((e) => `${e.code}`.length + 4),
  );
  parts.push(
    [
      "Exit codes:",
      ...spec.exits.map((e) =>
        formatRow(`  ${e.code}`, e.description, codeWidth)
      ),
    ].join("\n"),
  );
  if (spec.notes !== undefined) parts.push(spec.notes.trimEnd());
  return parts.join("\n\n") + "\n";
}

/**
 * Every environment variable a command reads: those behind its options'
 * `env`, then its own list.
 *
 * @param spec The command.
 * @returns One entry per variable, first mention wins.
 */
export function environmentOf(spec: CommandSpec): EnvSpec[] {
  const out: EnvSpec[] = [];
  for (const [name, row] of Object.entries(spec.options)) {
    if (row.env !== undefined) {
      out.push({
        name: row.env,
        description: `Default for --${name}${
          row.placeholder ? ` ${row.placeholder}` : ""
        }`,
      });
    }
  }
  out.push(...(spec.env ?? []));
  return out.filter((e, i) => out.findIndex((o) => o.name === e.name) === i);
}

function optionLeft(name: string, row: OptionSpec): string {
  const short = row.short !== undefined ? `-${row.short}, ` : "";
  const value = row.placeholder !== undefined ? ` ${row.placeholder}` : "";
  return `  ${short}--${name}${value}`;
}

function optionText(row: OptionSpec): string {
  let fallback = row.defaultText !== undefined
    ? `default: ${row.defaultText}`
    : row.default !== undefined
    ? `default ${row.default}`
    : undefined;
  if (row.env !== undefined) {
    fallback = `default $${row.env}${
      fallback !== undefined
        ? `, else ${fallback.replace(/^default:? /, "")}`
        : ""
    }`;
  }
  const extras = [row.multiple ? "repeatable" : undefined, fallback]
    .filter((x) => x !== undefined);
  return extras.length > 0
    ? `${row.description} (${extras.join("; ")})`
    : row.description;
}

/**
 * One help row: `left` padded to `width`, then `text` wrapped at 80
 * columns with a hanging indent (on its own line when `left` is too long).
 *
 * @param left The option or name, indented.
 * @param text The description.
 * @param width Column where descriptions start.
 * @returns One or more lines, without a final newline.
 */
export function formatRow(left: string, text: string, width: number): string {
  const indent = " ".repeat(width);
  const lines = wrap(text, WIDTH - width);
  const head = left.length + 2 <= width
    ? left.padEnd(width) + (lines[0] ?? "")
    : `${left}\n${indent}${lines[0] ?? ""}`;
  return [head, ...lines.slice(1).map((l) => indent + l)].join("\n");
}

/**
 * Words of `text` filled into lines of at most `width` characters (a longer
 * word gets a line of its own).
 *
 * @param text Words separated by any white space.
 * @param width Longest line.
 * @returns The lines.
 */
export function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(/\s+/).filter((w) => w !== "")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line === "" ? word : `${line} ${word}`;
    }
  }
  if (line !== "") lines.push(line);
  return lines;
}

/** What `main.ts` hands every command. */
export interface RunContext {
  /** The environment, for options with `env` and the variables commands read. */
  env: Record<string, string | undefined>;
  /** The release target, or "script" when moat runs from source. */
  target: string;
  /** Absolute path of `main.ts`, for a systemd unit that runs moat from source. */
  script: string;
}

/** A command: its table and what runs it. */
export interface Command {
  spec: CommandSpec;
  run(args: string[], context: RunContext): Promise<void>;
}
