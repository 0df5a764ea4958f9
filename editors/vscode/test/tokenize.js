// Tokenises .nn files with VS Code's own TextMate engine (vscode-textmate, vscode-oniguruma)
// and prints, per file, every token as [line, start, end, scopes] (JSON). scripts/editors_check.sh
// installs the two packages and tests/test_editor_lexer.py compares the tokens with Lark's.
// Usage: node tokenize.js FILE.nn...
const fs = require("fs");
const path = require("path");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const grammarPath = path.join(__dirname, "..", "syntaxes", "nn.tmLanguage.json");
const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm")).buffer;
const onigLib = oniguruma.loadWASM(wasm).then(() => ({
  createOnigScanner: (patterns) => new oniguruma.OnigScanner(patterns),
  createOnigString: (text) => new oniguruma.OnigString(text),
}));
const registry = new vsctm.Registry({
  onigLib,
  loadGrammar: async (scope) =>
    scope === "source.nn" ? vsctm.parseRawGrammar(fs.readFileSync(grammarPath, "utf8"), grammarPath) : null,
});

(async () => {
  const grammar = await registry.loadGrammar("source.nn");
  const out = {};
  for (const file of process.argv.slice(2)) {
    let stack = vsctm.INITIAL;
    const tokens = [];
    fs.readFileSync(file, "utf8").split("\n").forEach((line, i) => {
      const result = grammar.tokenizeLine(line, stack);
      for (const t of result.tokens) tokens.push([i, t.startIndex, t.endIndex, t.scopes]);
      stack = result.ruleStack;
    });
    out[file] = tokens;
  }
  process.stdout.write(JSON.stringify(out));
})();
