/**
 * Keeps docs/ARCHITECTURE.md true: the import rules, the runtime boundary,
 * "lib/ never prints", and a written reason for every file over 600 lines.
 *
 * The sources are read as text and split into tokens by a small scanner that
 * knows comments, strings, template literals and regular expressions, so a
 * `console.log` in a doc example or a `"Deno"` in a string is not code.
 *
 * @module
 */

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";

const ROOT = path.resolve(import.meta.dirname ?? ".", "..");
/** Files over this many lines need a reason in docs/ARCHITECTURE.md. */
const LONG_FILE_LINES = 600;
const LONG_FILES_HEADING = "## Files over 600 lines";

/** One token of TypeScript source. */
interface Token {
  kind: "name" | "string" | "template" | "regex" | "number" | "punct";
  /** The text; a string's value without its quotes. */
  value: string;
  /** 1-based line where the token starts. */
  line: number;
}

/** Keywords after which a `/` starts a regular expression, not a division. */
const BEFORE_REGEX = new Set([
  "return",
  "typeof",
  "instanceof",
  "in",
  "of",
  "new",
  "delete",
  "void",
  "throw",
  "case",
  "do",
  "else",
  "yield",
  "await",
]);

/**
 * Splits TypeScript source into tokens, dropping comments. Template literal
 * text becomes one `template` token per piece; the code inside `${…}` is
 * tokenized as code.
 */
function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  /** Open braces inside each `${` being scanned, innermost last. */
  const templates: number[] = [];
  let line = 1;
  // A shebang line is not code.
  let i = source.startsWith("#!") ? source.indexOf("\n") : 0;
  const n = source.length;

  function regexAllowed(): boolean {
    const last = tokens.at(-1);
    if (last === undefined) return true;
    if (last.kind === "name") return BEFORE_REGEX.has(last.value);
    if (last.kind === "punct") return !")]}".includes(last.value);
    return false;
  }

  /** Scans template text from `i` to the closing backtick or a `${`. */
  function templateText(): void {
    const start = line;
    let text = "";
    while (i < n) {
      const c = source[i]!;
      if (c === "\\") {
        text += source.slice(i, i + 2);
        if (source[i + 1] === "\n") line++;
        i += 2;
      } else if (c === "`") {
        i++;
        tokens.push({ kind: "template", value: text, line: start });
        return;
      } else if (c === "$" && source[i + 1] === "{") {
        i += 2;
        templates.push(0);
        tokens.push({ kind: "template", value: text, line: start });
        return;
      } else {
        if (c === "\n") line++;
        text += c;
        i++;
      }
    }
    throw new SyntaxError(`Unterminated template literal at line ${start}`);
  }

  while (i < n) {
    const c = source[i]!;
    const next = source[i + 1];
    if (c === "\n") {
      line++;
      i++;
    } else if (/\s/.test(c)) {
      i++;
    } else if (c === "/" && next === "/") {
      while (i < n && source[i] !== "\n") i++;
    } else if (c === "/" && next === "*") {
      const end = source.indexOf("*/", i + 2);
      if (end < 0) {
        throw new SyntaxError(`Unterminated comment at line ${line}`);
      }
      for (let j = i; j < end; j++) if (source[j] === "\n") line++;
      i = end + 2;
    } else if (c === '"' || c === "'") {
      const start = line;
      let value = "";
      i++;
      while (i < n && source[i] !== c) {
        if (source[i] === "\n") {
          throw new SyntaxError(`Unterminated string at line ${start}`);
        }
        if (source[i] === "\\") {
          if (source[i + 1] === "\n") line++;
          value += source.slice(i, i + 2);
          i += 2;
        } else value += source[i++];
      }
      i++;
      tokens.push({ kind: "string", value, line: start });
    } else if (c === "`") {
      i++;
      templateText();
    } else if (c === "/" && regexAllowed()) {
      const start = i;
      let inClass = false;
      i++;
      while (i < n && (inClass || source[i] !== "/")) {
        if (source[i] === "\n") {
          throw new SyntaxError(
            `Unterminated regular expression at line ${line}`,
          );
        }
        if (source[i] === "\\") i++;
        else if (source[i] === "[") inClass = true;
        else if (source[i] === "]") inClass = false;
        i++;
      }
      i++;
      while (i < n && /[a-z]/.test(source[i]!)) i++;
      tokens.push({ kind: "regex", value: source.slice(start, i), line });
    } else if (/[\p{L}_$#]/u.test(c)) {
      const start = i;
      i++;
      while (i < n && /[\p{L}\p{N}_$]/u.test(source[i]!)) i++;
      tokens.push({ kind: "name", value: source.slice(start, i), line });
    } else if (/[0-9]/.test(c)) {
      const start = i;
      while (i < n && /[\w.]/.test(source[i]!)) i++;
      tokens.push({ kind: "number", value: source.slice(start, i), line });
    } else if (
      c === "?" && next === "." && !/[0-9]/.test(source[i + 2] ?? "")
    ) {
      // Optional chaining reads as a property access.
      tokens.push({ kind: "punct", value: ".", line });
      i += 2;
    } else {
      if (templates.length > 0) {
        if (c === "{") templates[templates.length - 1]!++;
        else if (c === "}") {
          if (templates.at(-1) === 0) {
            templates.pop();
            i++;
            templateText();
            continue;
          }
          templates[templates.length - 1]!--;
        }
      }
      tokens.push({ kind: "punct", value: c, line });
      i++;
    }
  }
  return tokens;
}

/** One static or dynamic import of a module. */
interface ImportRef {
  specifier: string;
  line: number;
  /** `import type …` or `export type … from`: erased when compiled. */
  typeOnly: boolean;
}

/** Tokens allowed between `import`/`export` and `from`. */
function inClause(t: Token): boolean {
  if (t.kind === "name") return true;
  return t.kind === "punct" && "{},*".includes(t.value);
}

/**
 * The modules a file imports: `import … from "x"`, `import "x"`,
 * `export … from "x"` and `import("x")` with a literal specifier. Type-only
 * imports count: a cycle of types still ties the modules together.
 */
function importsOf(tokens: readonly Token[]): ImportRef[] {
  const refs: ImportRef[] = [];
  for (let k = 0; k < tokens.length; k++) {
    const t = tokens[k]!;
    if (t.kind !== "name" || (t.value !== "import" && t.value !== "export")) {
      continue;
    }
    if (tokens[k - 1]?.kind === "punct" && tokens[k - 1]!.value === ".") {
      continue;
    }
    const after = tokens[k + 1];
    if (after === undefined) break;
    if (t.value === "import" && after.kind === "string") {
      refs.push({ specifier: after.value, line: t.line, typeOnly: false });
      continue;
    }
    if (t.value === "import" && after.value === "(") {
      const arg = tokens[k + 2];
      if (arg?.kind === "string" && tokens[k + 3]?.value === ")") {
        refs.push({ specifier: arg.value, line: t.line, typeOnly: false });
      }
      continue;
    }
    // `import type X from`, `import type { X } from`; not `import type from`.
    const typeOnly = after.value === "type" &&
      tokens[k + 2]?.value !== "from" && tokens[k + 2]?.value !== ",";
    // `export const …`, `export function …`: not a re-export.
    if (
      t.value === "export" &&
      !(after.value === "{" || after.value === "*" || after.value === "type")
    ) continue;
    for (let j = k + 1; j < tokens.length && inClause(tokens[j]!); j++) {
      const word = tokens[j]!;
      if (word.kind === "name" && word.value === "from") {
        const spec = tokens[j + 1];
        if (spec?.kind === "string") {
          refs.push({ specifier: spec.value, line: t.line, typeOnly });
        }
        break;
      }
    }
  }
  return refs;
}

/** Every `.ts` file under `dir` (relative to ROOT), sorted. */
function tsFilesUnder(dir: string): string[] {
  const out: string[] = [];
  for (
    const entry of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })
  ) {
    const rel = `${dir}/${entry.name}`;
    if (entry.isDirectory()) out.push(...tsFilesUnder(rel));
    else if (entry.isFile() && entry.name.endsWith(".ts")) out.push(rel);
  }
  return out.sort();
}

/** A source file of the program: its path from the root and its tokens. */
interface SourceFile {
  file: string;
  tokens: Token[];
  lines: number;
}

/** main.ts, cli/ and lib/: the program itself. */
function programFiles(): SourceFile[] {
  return ["main.ts", ...tsFilesUnder("cli"), ...tsFilesUnder("lib")].map(
    (file) => {
      const text = fs.readFileSync(path.join(ROOT, file), "utf8");
      // Like `wc -l`: newline characters.
      const lines = text.split("\n").length - 1;
      try {
        return { file, tokens: tokenize(text), lines };
      } catch (err) {
        throw new Error(`Cannot scan ${file}: ${(err as Error).message}`);
      }
    },
  );
}

/** An import edge inside the program, with where it is written. */
interface Edge {
  from: string;
  to: string;
  line: number;
  typeOnly: boolean;
}

/** The import edges between program files (relative specifiers only). */
function importGraph(files: readonly SourceFile[]): Edge[] {
  const known = new Set(files.map((f) => f.file));
  const edges: Edge[] = [];
  for (const { file, tokens } of files) {
    for (const ref of importsOf(tokens)) {
      if (!ref.specifier.startsWith(".")) continue;
      const to = path.posix.normalize(
        path.posix.join(path.posix.dirname(file), ref.specifier),
      );
      assert.ok(
        known.has(to),
        `${file}:${ref.line} imports "${ref.specifier}", which is not a program file`,
      );
      edges.push({ from: file, to, line: ref.line, typeOnly: ref.typeOnly });
    }
  }
  return edges;
}

/**
 * The import cycles in a graph, each as a path that starts and ends at the
 * same node, starting from its smallest name. One cycle per back edge of a
 * depth-first search: every strongly connected component with a cycle shows
 * at least one.
 */
function findCycles(edges: readonly Pick<Edge, "from" | "to">[]): string[][] {
  const out = new Map<string, string[]>();
  for (const e of edges) {
    if (!out.has(e.from)) out.set(e.from, []);
    out.get(e.from)!.push(e.to);
  }
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const cycles = new Map<string, string[]>();
  function visit(node: string): void {
    state.set(node, "open");
    stack.push(node);
    for (const to of [...new Set(out.get(node) ?? [])].sort()) {
      const s = state.get(to);
      if (s === undefined) visit(to);
      else if (s === "open") {
        const loop = stack.slice(stack.indexOf(to));
        const first = loop.indexOf([...loop].sort()[0]!);
        const path = [...loop.slice(first), ...loop.slice(0, first)];
        cycles.set(path.join(" "), [...path, path[0]!]);
      }
    }
    stack.pop();
    state.set(node, "done");
  }
  for (const node of [...out.keys()].sort()) {
    if (!state.has(node)) visit(node);
  }
  return [...cycles.values()];
}

/** Where a name is used as code: `file:line`, for each `name` token. */
function usesOf(
  files: readonly SourceFile[],
  match: (tokens: readonly Token[], k: number) => boolean,
): string[] {
  const found: string[] = [];
  for (const { file, tokens } of files) {
    for (let k = 0; k < tokens.length; k++) {
      if (match(tokens, k)) found.push(`${file}:${tokens[k]!.line}`);
    }
  }
  return found;
}

/** `Deno` or `Bun` as an identifier, bare or as a property (`globalThis.Bun`). */
function namesRuntime(tokens: readonly Token[], k: number): boolean {
  const t = tokens[k]!;
  return t.kind === "name" && (t.value === "Deno" || t.value === "Bun");
}

/**
 * Printing: `console` (not as another object's property, except
 * `globalThis.console`), or `process.stdout` / `process.stderr`.
 */
function prints(tokens: readonly Token[], k: number): boolean {
  const t = tokens[k]!;
  if (t.kind !== "name") return false;
  const dot = tokens[k - 1]?.kind === "punct" && tokens[k - 1]!.value === ".";
  const owner = dot ? tokens[k - 2]?.value : undefined;
  if (t.value === "console") return !dot || owner === "globalThis";
  return (t.value === "stdout" || t.value === "stderr") && owner === "process";
}

/** The file names listed in the "Files over 600 lines" section. */
function documentedLongFiles(): Set<string> {
  const doc = fs.readFileSync(path.join(ROOT, "docs/ARCHITECTURE.md"), "utf8");
  const start = doc.search(new RegExp(`^${LONG_FILES_HEADING}\\b`, "m"));
  assert.ok(
    start >= 0,
    `docs/ARCHITECTURE.md has no "${LONG_FILES_HEADING}" section`,
  );
  const rest = doc.slice(start + LONG_FILES_HEADING.length);
  const end = rest.search(/^#{1,2} /m);
  const section = end < 0 ? rest : rest.slice(0, end);
  return new Set(
    [...section.matchAll(/`((?:lib|cli)\/[\w./-]+\.ts)`/g)].map((m) => m[1]!),
  );
}

describe("tokenize", () => {
  test("tokenize drops comments and keeps string values out of code", () => {
    const tokens = tokenize(
      [
        "// Deno.exit(1)",
        "/* console.log(Bun.version) */",
        "const a = \"Deno.pid\", b = 'console.log';",
        "const re = /Deno\\.[/]x/g, half = 1 / 2 / 3;",
        "const t = `Bun.${Deno.pid}${{ a: `x${console}` }.a}`;",
      ].join("\n"),
    );
    const code = tokens.filter((t) => t.kind === "name").map((t) =>
      `${t.value}@${t.line}`
    );
    assert.deepEqual(code, [
      "const@3",
      "a@3",
      "b@3",
      "const@4",
      "re@4",
      "half@4",
      "const@5",
      "t@5",
      "Deno@5",
      "pid@5",
      "a@5",
      "console@5",
      "a@5",
    ]);
    assert.deepEqual(
      tokens.filter((t) => t.kind === "regex").map((t) => t.value),
      ["/Deno\\.[/]x/g"],
    );
  });

  test("tokenize refuses an unterminated string instead of guessing", () => {
    assert.throws(() => tokenize('const a = "open\nconst b = 1;'), SyntaxError);
  });
});

describe("importsOf", () => {
  test("importsOf finds static, type-only, re-exported and literal dynamic imports", () => {
    const refs = importsOf(tokenize(
      [
        'import "./side.ts";',
        "import a, {",
        "  type B,",
        "  c as d,",
        '} from "./multi.ts";',
        'import type { E } from "./types.ts";',
        'export { f } from "./re.ts";',
        'export * as g from "./star.ts";',
        'export const from = "./not.ts";',
        'const h = await import("./lazy.ts");',
        "const u = import.meta.url;",
        '// import { x } from "./comment.ts";',
        'import type from "./default_named_type.ts";',
        'export type { F } from "./types.ts";',
      ].join("\n"),
    ));
    assert.deepEqual(refs, [
      { specifier: "./side.ts", line: 1, typeOnly: false },
      { specifier: "./multi.ts", line: 2, typeOnly: false },
      { specifier: "./types.ts", line: 6, typeOnly: true },
      { specifier: "./re.ts", line: 7, typeOnly: false },
      { specifier: "./star.ts", line: 8, typeOnly: false },
      { specifier: "./lazy.ts", line: 10, typeOnly: false },
      { specifier: "./default_named_type.ts", line: 13, typeOnly: false },
      { specifier: "./types.ts", line: 14, typeOnly: true },
    ]);
  });
});

describe("findCycles", () => {
  test("findCycles reports each cycle as a path from its smallest file", () => {
    const cycles = findCycles([
      { from: "lib/c.ts", to: "lib/a.ts" },
      { from: "lib/a.ts", to: "lib/b.ts" },
      { from: "lib/b.ts", to: "lib/c.ts" },
      { from: "lib/b.ts", to: "lib/d.ts" },
      { from: "lib/e.ts", to: "lib/e.ts" },
    ]);
    assert.deepEqual(cycles, [
      ["lib/a.ts", "lib/b.ts", "lib/c.ts", "lib/a.ts"],
      ["lib/e.ts", "lib/e.ts"],
    ]);
  });

  test("findCycles finds none in a graph with shared dependencies", () => {
    assert.deepEqual(
      findCycles([
        { from: "a", to: "b" },
        { from: "a", to: "c" },
        { from: "b", to: "d" },
        { from: "c", to: "d" },
      ]),
      [],
    );
  });
});

describe("docs/ARCHITECTURE.md rules", () => {
  const files = programFiles();
  const edges = importGraph(files);

  test("the import graph of main.ts, cli/ and lib/ has no cycle", () => {
    assert.ok(edges.length > 100, `only ${edges.length} import edges found`);
    const cycles = findCycles(edges).map((cycle) =>
      cycle.slice(1).map((to, i) => {
        const e = edges.find((e) => e.from === cycle[i] && e.to === to)!;
        return `${e.from}:${e.line} → ${to}${
          e.typeOnly ? " (import type)" : ""
        }`;
      }).join(", ")
    );
    assert.deepEqual(cycles, [], `import cycles:\n${cycles.join("\n")}`);
  });

  test("lib/net/ is the only code that names Deno or Bun", () => {
    const inNet = usesOf(
      files.filter((f) => f.file.startsWith("lib/net/")),
      namesRuntime,
    );
    assert.ok(
      inNet.length > 0,
      "the scanner found no Deno or Bun even in lib/net/",
    );
    const outside = usesOf(
      files.filter((f) => !f.file.startsWith("lib/net/")),
      namesRuntime,
    );
    assert.deepEqual(outside, [], "Deno or Bun used outside lib/net/");
  });

  test("lib/ never prints: no console, process.stdout or process.stderr", () => {
    const inCli = usesOf(
      files.filter((f) => f.file.startsWith("cli/")),
      prints,
    );
    assert.ok(inCli.length > 0, "the scanner found no printing even in cli/");
    const inLib = usesOf(
      files.filter((f) => f.file.startsWith("lib/")),
      prints,
    );
    assert.deepEqual(inLib, [], "lib/ prints");
  });

  test("lib/ outside lib/net/ imports from lib/net/ only types.ts (as types) and the portable streams.ts", () => {
    const uses = edges.filter((e) =>
      e.from.startsWith("lib/") && !e.from.startsWith("lib/net/") &&
      e.to.startsWith("lib/net/")
    );
    assert.ok(uses.length > 0, "no lib/ file imports lib/net/types.ts");
    // streams.ts turns any Conn into Web Streams and names no runtime.
    const bad = uses.filter((e) =>
      !(e.to === "lib/net/types.ts" && e.typeOnly) &&
      e.to !== "lib/net/streams.ts"
    )
      .map((e) => `${e.from}:${e.line} imports ${e.to}`);
    assert.deepEqual(
      bad,
      [],
      "lib/ takes a Net as an option; cli/ calls getNet()",
    );
  });

  test("lib/ imports nothing from cli/ or main.ts", () => {
    const bad = edges.filter((e) =>
      e.from.startsWith("lib/") && !e.to.startsWith("lib/")
    ).map((e) => `${e.from}:${e.line} imports ${e.to}`);
    assert.deepEqual(bad, []);
  });

  test("lib/segment/ imports nothing from lib/vault/ or lib/ship/", () => {
    const bad = edges.filter((e) =>
      e.from.startsWith("lib/segment/") &&
      (e.to.startsWith("lib/vault/") || e.to.startsWith("lib/ship/"))
    ).map((e) => `${e.from}:${e.line} imports ${e.to}`);
    assert.deepEqual(bad, []);
  });

  test(`every file in lib/ and cli/ over ${LONG_FILE_LINES} lines has a reason in docs/ARCHITECTURE.md`, () => {
    const listed = documentedLongFiles();
    const long = files.filter((f) =>
      f.file !== "main.ts" && f.lines > LONG_FILE_LINES
    ).map((f) => f.file);
    const missing = long.filter((f) => !listed.has(f));
    assert.deepEqual(
      missing,
      [],
      `add each to "${LONG_FILES_HEADING}" with its reason`,
    );
    const gone = [...listed].filter((f) => !files.some((s) => s.file === f));
    assert.deepEqual(
      gone,
      [],
      `"${LONG_FILES_HEADING}" names files that do not exist`,
    );
  });
});
