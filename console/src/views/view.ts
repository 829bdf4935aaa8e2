/** What the shell needs of a view: its element, and a refresh it calls every `pollMs`. */
export interface View {
  readonly title: string;
  readonly element: HTMLElement;
  readonly pollMs: number;
  /** Fetches and renders; throws to have the shell show the failure (and keep polling). */
  refresh(signal: AbortSignal): Promise<void>;
  dispose?(): void;
}
