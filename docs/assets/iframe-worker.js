// A stand-in for Web Workers on pages opened from file://, where browsers refuse to start
// them, so that this site's search works offline with nothing fetched from elsewhere.
// Material's offline plugin would load the iframe-worker package from a CDN for this; it
// skips that when a polyfill whose URL names "iframe-worker" is configured (mkdocs.yml,
// extra.polyfills), which is this file. The worker script runs in a hidden same-origin
// iframe; messages cross by events on the two windows.
(function () {
  "use strict";
  if (location.protocol !== "file:") return;

  class IFrameWorker extends EventTarget {
    constructor(url) {
      super();
      this._queue = [];
      this._ready = false;
      this._frame = document.createElement("iframe");
      this._frame.style.display = "none";
      (document.body || document.documentElement).appendChild(this._frame);
      const win = this._frame.contentWindow;
      const doc = this._frame.contentDocument;
      // The worker's postMessage(...) is its window's: deliver to this side's listeners.
      win.postMessage = (data) => {
        const event = new MessageEvent("message", { data: data });
        this.dispatchEvent(event);
        if (typeof this.onmessage === "function") this.onmessage(event);
      };
      const script = doc.createElement("script");
      script.src = new URL(url, location.href).href;
      script.onload = () => {
        this._ready = true;
        for (const data of this._queue.splice(0)) this._deliver(data);
      };
      doc.head.appendChild(script);
    }

    postMessage(data) {
      if (this._ready) this._deliver(data);
      else this._queue.push(data);
    }

    _deliver(data) {
      const win = this._frame.contentWindow;
      win.dispatchEvent(new win.MessageEvent("message", { data: data }));
    }

    terminate() {
      this._frame.remove();
    }
  }

  window.IFrameWorker = IFrameWorker;
  window.Worker = IFrameWorker;
})();
