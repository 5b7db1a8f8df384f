// One live chart: uPlot over a Series, redrawn at most once an animation frame however
// fast readings come, sized to its container. Loaded with the device page only.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { count } from "./format";
import type { Series } from "./series";

export interface Chart {
  /** The series changed: redraw at the next frame. */
  changed(): void;
  destroy(): void;
}

/** A chart of `series` in `el`; `summary` gets the newest value and the number of points
 * as text (what a screen reader, or a test, reads instead of the canvas). */
export function chart(
  el: HTMLElement,
  summary: HTMLElement | null,
  label: string,
  units: string,
  series: Series,
): Chart {
  const width = () => Math.max(240, el.clientWidth);
  const plot = new uPlot(
    {
      width: width(),
      height: 180,
      // Drag across the chart to zoom in; double-click to zoom out.
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      series: [{}, { label: units ? `${label} (${units})` : label, stroke: "#2a7ab0", width: 1.5 }],
      axes: [{}, { size: 56 }],
    },
    series.toArrays(),
    el,
  );
  // uPlot spans one point alone over a thousand days (its day, counted in ms, taken as
  // seconds) and asks no range function when there is data: a minute around it instead.
  const onePoint = () => {
    const [ts] = series.toArrays();
    if (ts.length === 1) plot.setScale("x", { min: ts[0] - 30, max: ts[0] + 30 });
  };
  onePoint();
  const summarise = () => {
    if (!summary) return;
    const [ts, vs] = series.toArrays();
    const n = ts.length;
    summary.dataset.points = String(n);
    if (n === 0) {
      summary.textContent = "No readings in this window yet.";
      return;
    }
    const v = String(vs[n - 1]);
    summary.dataset.value = v;
    const at = new Date(ts[n - 1] * 1000).toLocaleTimeString();
    summary.textContent = `Latest ${v}${units ? ` ${units}` : ""} at ${at}; ${count(n, "reading")} shown.`;
  };
  summarise();
  let pending = false;
  let destroyed = false;
  const resize = new ResizeObserver(() => plot.setSize({ width: width(), height: 180 }));
  resize.observe(el);
  return {
    changed() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        if (destroyed) return;
        // Keep a zoom the person chose: only follow the newest points when not zoomed.
        const [ts] = series.toArrays();
        const x = plot.scales.x;
        const following = x.min == null || x.max == null || ts.length < 2 || x.max >= ts[ts.length - 2];
        plot.setData(series.toArrays(), following);
        onePoint();
        summarise();
      });
    },
    destroy() {
      destroyed = true;
      resize.disconnect();
      plot.destroy();
    },
  };
}
