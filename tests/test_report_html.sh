#!/usr/bin/env bash
# test_report_html.sh — the HTML report in a real browser: headless Chromium
# loads the file offline, no console error, every chart has a non-zero
# rendered size, and a screenshot lands in the build folder. Also: the file
# fetches nothing, report's Markdown, --metrics, two files side by side,
# --png. Skipped (exit 77) in a build without PLplot; the browser part is
# skipped where no Chromium is installed.
#   usage: test_report_html.sh ATTNPROBE FIXTURES BUILD_DIR
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh"
build_dir=$3
if ! "$bin" --version | grep -q "charts yes"; then
  echo "skipped: this build has no PLplot, so no charts (scripts/setup.sh installs it)"
  exit 77
fi

cat > grid.json <<'EOF'
{"defaults": {"samples": 3, "max_length": 256, "layers": [3, 6, 9], "bootstrap": 200},
 "studies": [{"name": "iso", "types": "window,h2o,cms,race", "budget": [32, 64, 128]},
             {"name": "cas", "types": "window,h2o", "budget": [32, 64], "mode": "cascade", "layers": [6]}]}
EOF
expect_exit 0 "batch for the report" "$bin" batch grid.json --out b --quiet
expect_exit 0 "report --html --png --md" "$bin" report b/batch.json --html report.html --png png --md report.md
for chart in budget-kl budget-cosine budget-mass_retained budget-topk_recall_8 policy-layer heads-layer6 memory modes; do
  [ -s "png/$chart.png" ] || bad "no chart $chart.png"
done
[ "$(ls png | wc -l)" = 8 ] && ok "8 charts as PNG" || bad "PNGs: $(ls png)"
grep -c "<figure" report.html | grep -q '^8$' && ok "8 figures in the HTML" || bad "figures: $(grep -c '<figure' report.html)"
grep -Eq '<(script|link|img|iframe)[ >]|(src|href)="' report.html && bad "the HTML fetches something" \
  || ok "self-contained: no script, link, image or external reference"
grep -q "^| h2o budget=32 | 6 |" report.md && ok "Markdown table rows" || bad "report.md: $(head -5 report.md)"

expect_exit 0 "--metrics kl,l1,l2,kl_rev,topk_recall@1,topk_recall@32" "$bin" report b/cells/$(ls b/cells | head -1) \
  --metrics kl,l1,l2,kl_rev,topk_recall@1,topk_recall@32
head -3 out.txt | grep -q "topk_recall@32" && ok "chosen columns" || bad "columns: $(head -3 out.txt)"
expect_exit 2 "--metrics with an unknown metric" "$bin" report b/batch.json --metrics kl,klx
grep -q "accepted: kl, kl_rev" err.txt && ok "names the accepted metrics" || bad "$(cat err.txt)"
cells=(b/cells/*.json)
expect_exit 0 "two summaries side by side" "$bin" report "${cells[0]}" "${cells[1]}"
grep -q "B - A" out.txt && ok "differences printed" || bad "no difference table"
expect_exit 0 "run --format md,html" "$bin" --samples 2 --max-length 256 --types h2o,window --budget 32,64 --format json,md,html --out fm --quiet
[ -s fm/report.html ] && [ -s fm/report.md ] && ok "run writes report.md and report.html" || bad "run formats: $(ls fm)"
expect_exit 2 "run --format pdf" "$bin" --format text,pdf
expect_exit 0 "eval for the report" "$bin" eval --samples 3 --max-length 160 --types sink,h2o --budget 32,64 --quiet --out ev
expect_exit 0 "report of an eval, charts" "$bin" report ev/summary.json --png evpng
ls evpng | grep -q "budget-nll.png" && ls evpng | grep -q "memory-nll.png" && ok "eval charts: perplexity against budget and memory" \
  || bad "eval charts: $(ls evpng)"
expect_exit 0 "report of an eval, table" "$bin" report ev/summary.json
grep -q "perplexity" out.txt && ok "eval table in report" || bad "report of an eval: $(head -3 out.txt)"

browser=$(command -v chromium-headless-shell || command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "skipped: no Chromium (scripts/setup.sh installs chromium-headless-shell)"
  finish || exit 1
  exit 77
fi
# The check runs in the page: a copy of the report with a script that
# measures every chart and records errors, read back from the DOM.
sed 's#</body>#<script>\
var errors = []; window.addEventListener("error", function (e) { errors.push(String(e.message)); });\
window.addEventListener("load", function () {\
  var figs = document.querySelectorAll("figure svg"), sizes = [];\
  figs.forEach(function (s) { var r = s.getBoundingClientRect(); sizes.push(Math.round(r.width) + "x" + Math.round(r.height)); });\
  var p = document.createElement("pre"); p.id = "probe";\
  p.textContent = "charts=" + figs.length + " sizes=" + sizes.join(",") + " errors=" + errors.length;\
  document.body.appendChild(p); });\
</script></body>#' report.html > probe.html
flags=(--headless --no-sandbox --disable-gpu --no-first-run --allow-file-access-from-files --virtual-time-budget=3000)
"$browser" "${flags[@]}" --enable-logging=stderr --v=0 --dump-dom "file://$PWD/probe.html" > dom.html 2> console.txt
probe=$(grep -o '<pre id="probe">[^<]*' dom.html | sed 's/.*>//')
echo "browser: $probe"
[ -n "$probe" ] && ok "Chromium loaded the report" || bad "no probe in the DOM: $(tail -3 console.txt)"
echo "$probe" | grep -q "charts=8 " && ok "8 charts rendered" || bad "charts: $probe"
sizes=$(echo "$probe" | sed 's/.*sizes=\([^ ]*\).*/\1/' | tr , '\n')
[ "$(echo "$sizes" | grep -c '^[1-9][0-9]*x[1-9][0-9]*$')" = 8 ] && ok "every chart has a non-zero size" \
  || bad "sizes: $probe"
echo "$probe" | grep -q "errors=0" && ok "no script error" || bad "errors: $probe"
grep -i "console" console.txt | grep -Ei "error|uncaught" && bad "console errors" || ok "no console error"
"$browser" "${flags[@]}" --window-size=1200,3200 --screenshot="$build_dir/report-screenshot.png" \
  "file://$PWD/report.html" > /dev/null 2>&1
[ -s "$build_dir/report-screenshot.png" ] && ok "screenshot: $build_dir/report-screenshot.png" || bad "no screenshot"
finish
