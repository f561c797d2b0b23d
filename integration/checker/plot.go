package checker

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"os"
	"strconv"
	"time"
)

// PlotLatency writes an SVG scatter plot of write latency over time to
// path: one dot per write at (completion time, latency), acknowledged
// writes in blue, failed ones in red, indeterminate ones in orange (for
// those, "completion" is when the client gave up), and every fault of the
// history as a dashed vertical line with its label.
func PlotLatency(h *History, path string) error {
	return os.WriteFile(path, latencySVG(h), 0o644)
}

const (
	plotW, plotH                       = 960, 480
	marginL, marginR, marginT, marginB = 70, 20, 60, 50
)

var outcomeColor = map[Outcome]string{OK: "#1f77b4", Failed: "#d62728", Indeterminate: "#ff7f0e"}

func latencySVG(h *History) []byte {
	var writes []Op
	counts := map[Outcome]int{}
	for _, op := range h.Ops() {
		if op.Kind == Write {
			writes = append(writes, op)
			counts[op.Outcome]++
		}
	}
	faults := h.Faults()
	xmax, ymax := time.Millisecond, time.Millisecond
	for _, op := range writes {
		xmax = max(xmax, op.Return)
		ymax = max(ymax, op.Return-op.Call)
	}
	for _, f := range faults {
		xmax = max(xmax, f.At)
	}
	xs, xmaxT := ticks(xmax.Seconds())
	ys, ymaxT := ticks(float64(ymax) / float64(time.Millisecond) * 1.05)
	iw, ih := float64(plotW-marginL-marginR), float64(plotH-marginT-marginB)
	px := func(sec float64) float64 { return marginL + sec/xmaxT*iw }
	py := func(ms float64) float64 { return marginT + ih - ms/ymaxT*ih }

	var b bytes.Buffer
	text := func(x, y float64, anchor, size, s string) {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%s">`, x, y, anchor, size)
		xml.EscapeText(&b, []byte(s))
		b.WriteString("</text>\n")
	}
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n",
		plotW, plotH, plotW, plotH)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	text(plotW/2, 18, "middle", "14", fmt.Sprintf("write latency: %d writes, %d ok, %d failed, %d indeterminate; %d faults",
		len(writes), counts[OK], counts[Failed], counts[Indeterminate], len(faults)))

	// Axes and grid.
	b.WriteString(`<g stroke="#ddd" stroke-width="1">` + "\n")
	for _, v := range xs {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f"/>`+"\n", px(v), marginT, px(v), marginT+ih)
	}
	for _, v := range ys {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`+"\n", marginL, py(v), marginL+iw, py(v))
	}
	b.WriteString("</g>\n")
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%.1f" fill="none" stroke="black"/>`+"\n", marginL, marginT, iw, ih)
	for _, v := range xs {
		text(px(v), marginT+ih+16, "middle", "11", strconv.FormatFloat(v, 'g', 4, 64))
	}
	for _, v := range ys {
		text(marginL-6, py(v)+4, "end", "11", strconv.FormatFloat(v, 'g', 4, 64))
	}
	text(marginL+iw/2, plotH-10, "middle", "12", "completion time (s)")
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" font-size="12" transform="rotate(-90 16 %.1f)">latency (ms)</text>`+"\n",
		marginT+ih/2, marginT+ih/2)

	// Points: acknowledged first, so that failures are drawn on top.
	for _, oc := range []Outcome{OK, Indeterminate, Failed} {
		fmt.Fprintf(&b, `<g fill="%s" fill-opacity="0.7" class="%s">`+"\n", outcomeColor[oc], oc)
		for _, op := range writes {
			if op.Outcome != oc {
				continue
			}
			lat := float64(op.Return-op.Call) / float64(time.Millisecond)
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2"/>`+"\n", px(op.Return.Seconds()), py(lat))
		}
		b.WriteString("</g>\n")
	}

	// Faults.
	for i, f := range faults {
		x := px(f.At.Seconds())
		color := "#6a3d9a"
		if f.Err != "" {
			color = "#b15928"
		}
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="4 3" class="fault"/>`+"\n",
			x, marginT, x, marginT+ih, color)
		label := f.Label()
		if f.Err != "" {
			label += " (failed)"
		}
		// Stagger labels over four rows so neighbours stay readable.
		text(x+2, float64(marginT-34+(i%4)*9), "start", "9", label)
	}

	// Legend.
	lx := marginL + iw - 170
	for i, oc := range []Outcome{OK, Failed, Indeterminate} {
		y := float64(marginT + 12 + i*14)
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>`+"\n", lx, y-4, outcomeColor[oc])
		text(lx+8, y, "start", "11", fmt.Sprintf("%s (%d)", oc, counts[oc]))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// ticks returns about six round tick values from 0 to at least hi, and
// the axis end (the last tick).
func ticks(hi float64) ([]float64, float64) {
	if hi <= 0 || math.IsNaN(hi) || math.IsInf(hi, 0) {
		hi = 1
	}
	raw := hi / 6
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for v := 0.0; ; v += step {
		out = append(out, math.Round(v/step)*step)
		if v >= hi {
			break
		}
	}
	return out, out[len(out)-1]
}
