// Points of one chart: a bounded ring, so a page following devices for hours holds the
// same memory as after a minute. Times are seconds (uPlot's unit), kept in order.

export class Series {
  private t: Float64Array;
  private v: Float64Array;
  private start = 0;
  private len = 0;

  constructor(readonly capacity: number) {
    this.t = new Float64Array(capacity);
    this.v = new Float64Array(capacity);
  }

  get length(): number {
    return this.len;
  }

  /** Adds a point; one older than the newest is put in its place; the oldest is dropped
   * when full. */
  push(time: number, value: number): void {
    if (this.len > 0 && time < this.timeAt(this.len - 1)) {
      this.insert(time, value);
      return;
    }
    if (this.len === this.capacity) {
      this.start = (this.start + 1) % this.capacity;
      this.len--;
    }
    const i = (this.start + this.len) % this.capacity;
    this.t[i] = time;
    this.v[i] = value;
    this.len++;
  }

  private timeAt(k: number): number {
    return this.t[(this.start + k) % this.capacity];
  }

  private insert(time: number, value: number) {
    const all = this.toArrays();
    let k = all[0].length;
    while (k > 0 && all[0][k - 1] > time) k--;
    all[0].splice(k, 0, time);
    all[1].splice(k, 0, value);
    const from = Math.max(0, all[0].length - this.capacity);
    this.start = 0;
    this.len = 0;
    for (let j = from; j < all[0].length; j++) {
      this.t[this.len] = all[0][j];
      this.v[this.len] = all[1][j];
      this.len++;
    }
  }

  /** Drops points older than `time`. */
  dropBefore(time: number): void {
    while (this.len > 0 && this.t[this.start] < time) {
      this.start = (this.start + 1) % this.capacity;
      this.len--;
    }
  }

  /** The points as uPlot takes them: [times, values]. */
  toArrays(): [number[], number[]] {
    const ts: number[] = [];
    const vs: number[] = [];
    for (let k = 0; k < this.len; k++) {
      const i = (this.start + k) % this.capacity;
      ts.push(this.t[i]);
      vs.push(this.v[i]);
    }
    return [ts, vs];
  }
}
