// Pages loaded when first opened, so the first page a person sees ships only what it
// needs (the bytes the console's benchmark counts).
import type { ComponentType } from "preact";
import { useEffect, useState } from "preact/hooks";

/** A component whose code comes from `load` the first time it is shown. */
export function lazy(load: () => Promise<ComponentType>): ComponentType {
  let loaded: ComponentType | null = null;
  return function Lazy() {
    const [Page, setPage] = useState<ComponentType | null>(() => loaded);
    const [failed, setFailed] = useState(false);
    useEffect(() => {
      if (Page) return;
      let live = true;
      load().then(
        (c) => {
          loaded = c;
          if (live) setPage(() => c);
        },
        () => live && setFailed(true),
      );
      return () => {
        live = false;
      };
    }, []);
    if (failed) {
      // The node was upgraded since this page loaded: the page's code is another file.
      return (
        <p class="error" role="alert">
          This page cannot be loaded: reload the console.
        </p>
      );
    }
    return Page ? (
      <Page />
    ) : (
      <p class="muted" role="status">
        Loading…
      </p>
    );
  };
}
