/**
 * docs/AUDIT.md documents exactly the audit events the code can write: every
 * `audit.write("…")` (and the log's own `#emit("…")`) in lib/ and cli/
 * against the `### \`event\`` headings of its "Events" section.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");

/** Every .ts file under `dir`, recursively. */
function sources(dir: string): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sources(full));
    else if (entry.name.endsWith(".ts")) out.push(full);
  }
  return out;
}

/**
 * The text of the first argument of a call whose `(` is at `open`: up to the
 * first comma or `)` outside brackets and strings.
 */
function firstArgument(text: string, open: number): string {
  let depth = 0;
  let quote: string | undefined;
  for (let i = open + 1; i < text.length; i++) {
    const c = text[i]!;
    if (quote !== undefined) {
      if (c === "\\") i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === '"' || c === "'" || c === "`") quote = c;
    else if ("([{".includes(c)) depth++;
    else if (depth > 0 && ")]}".includes(c)) depth--;
    else if (depth === 0 && (c === "," || c === ")")) {
      return text.slice(open + 1, i);
    }
  }
  throw new Error(`Unclosed call at offset ${open}`);
}

/** Splits `text` at the first `sep` outside brackets and strings. */
function splitTop(text: string, sep: string): [string, string] | undefined {
  let depth = 0;
  let quote: string | undefined;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quote !== undefined) {
      if (c === "\\") i++;
      else if (c === quote) quote = undefined;
      continue;
    }
    if (c === '"' || c === "'") quote = c;
    else if ("([{".includes(c)) depth++;
    else if (")]}".includes(c)) depth--;
    else if (depth === 0 && c === sep) {
      return [text.slice(0, i), text.slice(i + 1)];
    }
  }
  return undefined;
}

/**
 * The event names an argument can be: a string literal, or a conditional
 * whose branches are; undefined for anything else.
 */
function eventNames(arg: string): string[] | undefined {
  const expr = arg.trim();
  const literal = /^"([a-z_]+)"$/.exec(expr);
  if (literal) return [literal[1]!];
  const test = splitTop(expr, "?");
  const branches = test && splitTop(test[1], ":");
  if (branches === undefined) return undefined;
  const [yes, no] = branches.map(eventNames);
  return yes && no && [...yes, ...no];
}

/** Every event the code in lib/ and cli/ can write, with where. */
function writtenEvents(): Map<string, string[]> {
  const found = new Map<string, string[]>();
  const unknown: string[] = [];
  for (const file of [...sources(`${ROOT}/lib`), ...sources(`${ROOT}/cli`)]) {
    const text = fs.readFileSync(file, "utf8");
    const calls = /\baudit\.write\(|#emit\(\s*"/g;
    for (const m of text.matchAll(calls)) {
      const at = `${path.relative(ROOT, file)}:${
        text.slice(0, m.index).split("\n").length
      }`;
      if (m[0].startsWith("#emit") && !file.endsWith("lib/audit.ts")) continue;
      const open = m.index! + m[0].indexOf("(");
      const arg = firstArgument(text, open);
      // A wrapper that passes its caller's event on names no event itself.
      if (arg.trim() === "event") continue;
      const names = eventNames(arg);
      if (names === undefined) {
        unknown.push(`${at}: ${arg.trim()}`);
        continue;
      }
      for (const name of names) found.set(name, [...found.get(name) ?? [], at]);
    }
  }
  assert.deepEqual(
    unknown,
    [],
    "audit events must be written as string literals (or a ?: of them)",
  );
  return found;
}

/** The events docs/AUDIT.md documents: the headings of its Events section. */
function documentedEvents(): string[] {
  const doc = fs.readFileSync(`${ROOT}/docs/AUDIT.md`, "utf8");
  const section = doc.split(/^## /m).find((s) => s.startsWith("Events\n"));
  assert.ok(section, 'docs/AUDIT.md has an "## Events" section');
  return [...section.matchAll(/^### `([a-z_]+)`$/gm)].map((m) => m[1]!);
}

test("docs/AUDIT.md documents exactly the audit events lib/ and cli/ can write", () => {
  const written = writtenEvents();
  const documented = documentedEvents();
  assert.equal(
    new Set(documented).size,
    documented.length,
    "each event once",
  );
  const undocumented = [...written.keys()].filter((e) =>
    !documented.includes(e)
  ).map((e) => `${e} (${written.get(e)!.join(", ")})`);
  const unwritten = documented.filter((e) => !written.has(e));
  assert.deepEqual(undocumented, [], "written but not in docs/AUDIT.md");
  assert.deepEqual(unwritten, [], "in docs/AUDIT.md but never written");
});

test("eventNames reads literals and conditionals of literals, nothing else", () => {
  assert.deepEqual(eventNames(' "closed" '), ["closed"]);
  assert.deepEqual(
    eventNames(
      'e.kind === "exhausted" ? "accept_exhausted" : "accept_recovered"',
    ),
    ["accept_exhausted", "accept_recovered"],
  );
  assert.deepEqual(
    eventNames('a ? "x" : b ? "y" : "z"'),
    ["x", "y", "z"],
  );
  assert.equal(eventNames("name"), undefined);
  assert.equal(eventNames("`x_${y}`"), undefined);
  assert.equal(eventNames('a ? "x" : name'), undefined);
  assert.equal(
    firstArgument('audit.write(f(a, "b"), { c: 1 })', 11),
    'f(a, "b")',
  );
});
