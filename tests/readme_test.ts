/**
 * The README's option tables list every option the commands take, so that
 * nothing a user can set is undocumented there.
 *
 * @module
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { SERVE } from "../cli/serve.ts";

const README = fs.readFileSync(
  path.join(import.meta.dirname!, "..", "README.md"),
  "utf8",
);

/** The options named in the first column of the table under `heading`. */
function tableOptions(heading: string): Set<string> {
  const start = README.indexOf(`\n${heading}\n`);
  assert.ok(start >= 0, `README has no "${heading}" section`);
  const rest = README.slice(start + heading.length + 2);
  const end = rest.search(/\n#+ /);
  const section = end < 0 ? rest : rest.slice(0, end);
  const names = new Set<string>();
  for (const line of section.split("\n")) {
    if (!line.startsWith("| `--")) continue;
    const first = line.split("|")[1]!;
    for (const m of first.matchAll(/`--([a-z0-9-]+)/g)) names.add(m[1]!);
  }
  return names;
}

test("README's moat serve table lists every serve option, and no other", () => {
  const documented = tableOptions("### `moat serve`");
  const options = Object.keys(SERVE.options).filter((o) => o !== "help");
  assert.deepEqual(
    options.filter((o) => !documented.has(o)),
    [],
    "options missing from the README table",
  );
  assert.deepEqual(
    [...documented].filter((o) => !options.includes(o)),
    [],
    "README rows for options moat serve does not take",
  );
});
